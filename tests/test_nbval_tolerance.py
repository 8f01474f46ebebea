"""The tolerant comparison of ``nbval-approx`` cells (conftest.py at the project's root).

Numbers within ``0.01 + 1%`` of the stored ones are accepted; anything else
(a number further off, a changed word, a changed shape) must still fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from nbval.plugin import IPyNbCell, get_sanitize_patterns, nocolors

from d2l_utils import EpochStats, History

PROJECT = Path(__file__).resolve().parents[1]
SANITIZE = PROJECT / "tests" / "sanitize.cfg"


@pytest.fixture(scope="module")
def course(request):
    """The project's conftest module, as pytest loaded it for this session."""
    for plugin in request.config.pluginmanager.get_plugins():
        path = getattr(plugin, "__file__", None)
        if path and Path(path).resolve() == PROJECT / "conftest.py":
            return plugin
    pytest.fail("the project's conftest.py was not loaded")


# --- close_enough -----------------------------------------------------------------------------

@pytest.mark.parametrize("test, ref", [
    ("0.5049", "0.5000"),      # 0.0049 <= 0.01 + 0.005
    ("0.0099", "0.0000"),      # the absolute part alone
    ("1.019", "1.000"),        # just inside 0.02
    ("99.1", "100"),           # the relative part: 0.9 <= 1.01
    ("-2.02", "-2.00"),
    ("12,400", "12,345"),      # thousands separators
    ("1.5e-3", "1e-3"),
])
def test_close_enough_accepts_numbers_within_the_tolerance(course, test, ref):
    assert course.close_enough(test, ref)


@pytest.mark.parametrize("test, ref", [
    ("0.5200", "0.5000"),      # 0.02 > 0.015
    ("0.0110", "0.0000"),
    ("1.021", "1.000"),        # just outside 0.02
    ("98.9", "100.1"),         # 1.2 > 1.011
    ("0.5", "-0.5"),
    ("12,600", "12,345"),
])
def test_close_enough_rejects_numbers_beyond_the_tolerance(course, test, ref):
    assert not course.close_enough(test, ref)


def test_the_tolerance_is_the_documented_one(course):
    assert (course.ABS_TOL, course.REL_TOL, course.APPROX_TAG) == (0.01, 0.01, "nbval-approx")


# --- align_numbers ----------------------------------------------------------------------------

def test_numbers_within_tolerance_take_the_stored_values(course):
    ref = "train loss 0.3055, train acc 0.884, test acc 0.868 after 10 epochs on cpu"
    test = "train loss 0.3071, train acc 0.881, test acc 0.871 after 10 epochs on cpu"
    assert course.align_numbers(test, ref) == ref


def test_a_number_out_of_tolerance_stays_as_computed(course):
    ref = "train loss 0.3055, train acc 0.884, test acc 0.868"
    test = "train loss 0.3071, train acc 0.884, test acc 0.801"
    assert course.align_numbers(test, ref) == "train loss 0.3055, train acc 0.884, test acc 0.801"


@pytest.mark.parametrize("test, ref", [
    ("train loss 0.3055 after 10 epochs on cuda", "train loss 0.3055 after 10 epochs on cpu"),
    ("test acc 0.868", "train acc 0.868"),
    ("loss: 0.5", "loss 0.5"),
    ("accuracy 0.5 0.6", "accuracy 0.5"),
    ("accuracy 0.868%", "accuracy 0.868"),
])
def test_changed_words_are_not_aligned(course, test, ref):
    assert course.align_numbers(test, ref) == test != ref


@pytest.mark.parametrize("test, ref", [
    ("torch.Size([1, 16, 5, 5])", "torch.Size([1, 16, 4, 4])"),
    ("(1, 6, 28, 28)", "(1, 6, 14, 14)"),
    ("(1, 400)", "(1, 400, 1)"),
    ("(256, 1, 96, 96)", "(256, 1, 224, 224)"),
])
def test_changed_shapes_are_not_aligned(course, test, ref):
    assert course.align_numbers(test, ref) != ref


def test_column_padding_may_differ_but_not_the_words(course):
    ref = "    1      0.5123      0.812\n"
    assert course.align_numbers("    1     0.5120      0.812\n", ref) == ref
    assert course.align_numbers("    1        0.5120  0.812\n", ref) == ref
    assert course.align_numbers("    1      0.5120      0.812 \n", ref) != ref
    assert course.align_numbers("    1      0.5120\n      0.812\n", ref) != ref


# --- inside nbval's own comparison ------------------------------------------------------------

class Cell:
    """The parts of nbval's IPyNbCell that its comparison uses, with the real methods."""

    compare_outputs = IPyNbCell.compare_outputs  # as extended by the project's conftest.py
    sanitize = IPyNbCell.sanitize
    colors = nocolors

    def __init__(self, tags=()):
        self.cell = nbformat.from_dict({"metadata": {"tags": list(tags)}})
        patterns = dict(get_sanitize_patterns(SANITIZE.read_text()))
        skip = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
                "image/png", "image/jpeg")
        self.parent = SimpleNamespace(skip_compare=skip, sanitize_patterns=patterns)
        self.mismatches: list[tuple] = []

    def format_output_compare(self, key, left, right):
        self.mismatches.append((key, left, right))

    def same(self, test: list, ref: list) -> bool:
        return self.compare_outputs([nbformat.from_dict(o) for o in test],
                                    [nbformat.from_dict(o) for o in ref])


def stdout(*lines: str) -> list[dict]:
    """Each line as its own stream output, as train_classifier's flushed prints arrive."""
    return [{"output_type": "stream", "name": "stdout", "text": line + "\n"} for line in lines]


def training_log(rows: list[tuple[float, float, float, float, float]]) -> list[str]:
    """What train_classifier prints for these (loss, train acc, test acc, seconds, examples/s)."""
    stats = [EpochStats(i, *row) for i, row in enumerate(rows, start=1)]
    history = History(stats)
    return [History.HEADER, *map(History.format_row, stats), history.summary()]


STORED = training_log([(1.1484, 0.552, 0.753, 3.3, 18283.0), (0.5335, 0.797, 0.812, 2.8, 21506.0)])
RERUN = training_log([(1.1490, 0.551, 0.755, 9.7, 6186.0), (0.5321, 0.799, 0.810, 11.4, 5263.0)])
DRIFTED = training_log([(1.1490, 0.551, 0.755, 9.7, 6186.0), (0.5321, 0.799, 0.790, 11.4, 5263.0)])


def test_the_extension_is_installed_on_nbval():
    assert getattr(IPyNbCell, "_approx_installed", False)


def test_a_rerun_within_tolerance_and_with_other_timings_passes_in_an_approx_cell():
    cell = Cell(tags=["nbval-approx"])
    assert cell.same(stdout(*RERUN), stdout("\n".join(STORED)))
    assert cell.mismatches == []


def test_the_same_rerun_fails_in_an_ordinary_cell():
    cell = Cell()
    assert not cell.same(stdout(*RERUN), stdout(*STORED))
    assert cell.mismatches


def test_a_number_out_of_tolerance_fails_in_an_approx_cell():
    cell = Cell(tags=["nbval-approx"])
    assert not cell.same(stdout(*DRIFTED), stdout(*STORED))
    (key, stored, computed), = cell.mismatches
    assert key == "stdout" and "0.790" in computed and "0.812" in stored


def test_a_changed_word_fails_in_an_approx_cell():
    cell = Cell(tags=["nbval-approx"])
    assert not cell.same(stdout(*RERUN[:-1], RERUN[-1].replace("cpu", "cuda")), stdout(*STORED))


def test_an_extra_or_missing_output_fails_in_an_approx_cell():
    cell = Cell(tags=["nbval-approx"])
    extra = [{"output_type": "stream", "name": "stderr", "text": "warning\n"}]
    assert not cell.same(stdout(*RERUN) + extra, stdout(*STORED))
    assert not Cell(tags=["nbval-approx"]).same(stdout(*RERUN), stdout(*STORED) + extra)


def test_rich_results_are_compared_with_tolerance_too():
    def result(text):
        return [{"output_type": "execute_result", "execution_count": 3, "metadata": {},
                 "data": {"text/plain": text}}]

    cell = Cell(tags=["nbval-approx"])
    assert cell.same(result("tensor([0.8123, 0.0415])"), result("tensor([0.8100, 0.0400])"))
    assert not cell.same(result("tensor([0.8123, 0.0415])"), result("tensor([0.7900, 0.0400])"))
    assert not Cell().same(result("tensor([0.8123, 0.0415])"), result("tensor([0.8100, 0.0400])"))


# --- end to end: pytest --nbval on a small notebook -------------------------------------------

def test_pytest_nbval_accepts_and_rejects_the_right_cells(tmp_path):
    def code(source, text, tags=()):
        return nbformat.v4.new_code_cell(source, metadata={"tags": list(tags)}, outputs=[
            nbformat.v4.new_output("stream", name="stdout", text=text)])

    cells = {
        "approx-close": code('print("loss 0.5012 acc 0.811")', "loss 0.5000 acc 0.810\n",
                             ["nbval-approx"]),
        "approx-far": code('print("loss 0.5400 acc 0.811")', "loss 0.5000 acc 0.810\n",
                           ["nbval-approx"]),
        "approx-words": code('print("loss 0.5000 accuracy 0.810")', "loss 0.5000 acc 0.810\n",
                             ["nbval-approx"]),
        "approx-timing": code('print(f"{12.3:7.1f} s  {4862:9,.0f}/s  0.812")',
                              "    3.3 s     18,283/s  0.810\n", ["nbval-approx"]),
        "exact-close": code('print("loss 0.5012")', "loss 0.5000\n"),
        "exact-same": code('print("(1, 6, 28, 28)")', "(1, 6, 28, 28)\n"),
    }
    for count, cell in enumerate(cells.values(), start=1):
        cell.execution_count = count  # nbval refuses stored outputs of a cell never run
    notebook = nbformat.v4.new_notebook(cells=list(cells.values()))
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, tmp_path / "cells.ipynb")
    (tmp_path / "conftest.py").write_text((PROJECT / "conftest.py").read_text())
    env = {**os.environ, "D2L_RESULTS_DIR": str(tmp_path / "results")}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env",
         f"--nbval-sanitize-with={SANITIZE}", "-p", "no:cacheprovider", "--junitxml=report.xml",
         "-q", "cells.ipynb"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    outcome = junit_outcomes(tmp_path / "report.xml")
    assert len(outcome) == len(cells), run.stdout + run.stderr
    assert dict(zip(cells, outcome)) == {
        "approx-close": "passed", "approx-far": "failed", "approx-words": "failed",
        "approx-timing": "passed", "exact-close": "failed", "exact-same": "passed",
    }, run.stdout


def junit_outcomes(path: Path) -> list[str]:
    """passed/failed of each test case, in the order of the report."""
    import xml.etree.ElementTree as ET

    cases = ET.parse(path).getroot().iter("testcase")
    return ["failed" if case.find("failure") is not None or case.find("error") is not None
            else "passed" for case in cases]
