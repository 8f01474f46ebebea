"""Measured tolerances of the notebook regression (d2l_utils/tolerance.py, conftest.py, calibrate).

A number that a numerics variant moved gets a band of
``max(4 standard deviations, largest deviation, one unit of its last digit)``;
everything else (words, shapes, numbers no variant moved) stays exact.
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
from d2l_utils.notebooks import CALIBRATION_KEY, NUMERICS_VARIANTS, SEED_VARIANTS, calibrate
from d2l_utils.tolerance import (METADATA_KEY, SIGMAS, Band, StaleCalibration, align_outputs,
                                 band_for, cell_bands, fields, sanitizer, split_numbers)

PROJECT = Path(__file__).resolve().parents[1]
SANITIZE = PROJECT / "tests" / "sanitize.cfg"
sanitize = sanitizer(SANITIZE.read_text())


def stdout(*lines: str) -> list:
    """Each line as its own stream output, as train_classifier's flushed prints arrive."""
    return [nbformat.v4.new_output("stream", name="stdout", text=line + "\n") for line in lines]


def result(text: str) -> list:
    return [nbformat.v4.new_output("execute_result", data={"text/plain": text}, execution_count=3)]


def training_log(rows: list[tuple[float, float, float, float, float]]) -> list[str]:
    """What train_classifier prints for these (loss, train acc, test acc, seconds, examples/s)."""
    stats = [EpochStats(i, *row) for i, row in enumerate(rows, start=1)]
    return [History.HEADER, *map(History.format_row, stats), History(stats).summary()]


# --- the rule ---------------------------------------------------------------------------------

def test_a_band_is_four_standard_deviations_when_that_is_widest():
    band = band_for(0, "0.800", ["0.790", "0.810", "0.800", "0.795", "0.805"])
    assert SIGMAS == 4
    assert band.std == pytest.approx(0.0070711, rel=1e-4)
    assert band.max_deviation == pytest.approx(0.010)
    assert band.tolerance == pytest.approx(4 * band.std)


def test_a_band_covers_the_largest_deviation_seen():
    """With few runs, one far run can lie beyond 4 standard deviations of all of them."""
    band = band_for(0, "0.500", ["0.500"] * 20 + ["0.530"])
    assert band.tolerance == pytest.approx(0.030) and band.tolerance > 4 * band.std


@pytest.mark.parametrize("stored, unit", [("0.790", 0.001), ("12,345", 1.0), ("1.0e-3", 1e-4),
                                          ("7", 1.0), ("0.5049", 1e-4)])
def test_a_band_is_never_narrower_than_one_unit_of_the_last_digit(stored, unit):
    band = band_for(0, stored, [stored.replace("0", "0")])
    assert band.tolerance == pytest.approx(unit)


def test_metadata_rounds_a_band_up_never_down():
    band = band_for(3, "0.800", ["0.8123"])
    entry = band.as_metadata()
    assert entry["tolerance"] >= band.tolerance and entry["tolerance"] == 0.0348  # 4 x 0.0086974.. rounded up
    assert Band.from_metadata(entry).index == 3


@pytest.mark.parametrize("text, words, numbers", [
    ("loss 0.5000 acc 0.810", ["loss ", " acc ", ""], ["0.5000", "0.810"]),
    ("    1      0.5123", [" ", " ", ""], ["1", "0.5123"]),
    ("torch.Size([1, 16, 5, 5])", ["torch.Size([", ", ", ", ", ", ", "])"], ["1", "16", "5", "5"]),
    ("12,345 images, 1e-3", ["", " images, ", ""], ["12,345", "1e-3"]),
    ("difference +0.0034, gap -0.0089", ["difference ", ", gap ", ""], ["+0.0034", "-0.0089"]),
])
def test_text_splits_into_words_and_numbers(text, words, numbers):
    assert split_numbers(text) == (words, numbers)


# --- which numbers get bands ------------------------------------------------------------------

STORED = stdout(*training_log([(1.1484, 0.552, 0.753, 3.3, 18283.0), (0.5335, 0.797, 0.812, 2.8, 21506.0)]))
AVX2 = stdout(*training_log([(1.1490, 0.551, 0.755, 9.7, 6186.0), (0.5321, 0.799, 0.810, 11.4, 5263.0)]))
SEED = stdout(*training_log([(1.1602, 0.540, 0.741, 3.0, 20000.0), (0.5401, 0.790, 0.821, 2.9, 20600.0)]))


def test_numbers_that_numerics_move_get_bands_and_the_epochs_stay_exact():
    found = cell_bands(STORED, {"aten-avx2": AVX2, "mkl": STORED}, {}, sanitize)
    assert found.problems == []
    numbers = [n for _, text in fields(STORED, sanitize) for n in split_numbers(text)[1]]
    banded = {numbers[b.index] for b in found.bands}
    assert banded == {"1.1484", "0.552", "0.753", "0.5335", "0.797", "0.812"}
    assert "1" not in banded and "2" not in banded  # epoch numbers and "after 2 epochs"


def test_seeds_widen_the_bands_of_moving_numbers_only():
    numerics_only = cell_bands(STORED, {"aten-avx2": AVX2}, {}, sanitize)
    with_seed = cell_bands(STORED, {"aten-avx2": AVX2}, {"seed-1": SEED}, sanitize)
    assert [b.index for b in with_seed.bands] == [b.index for b in numerics_only.bands]
    assert all(w.tolerance >= n.tolerance for w, n in zip(with_seed.bands, numerics_only.bands))
    assert max(b.tolerance for b in with_seed.bands) > max(b.tolerance for b in numerics_only.bands)


def test_a_parameter_that_only_a_seed_changes_stays_exact():
    found = cell_bands(stdout("profile 'quick' on cpu (seed 0)"), {"aten-avx2": stdout("profile 'quick' on cpu (seed 0)")},
                       {"seed-1": stdout("profile 'quick' on cpu (seed 1)")}, sanitize)
    assert found.bands == [] and found.problems == []


def test_a_difference_whose_sign_a_seed_flips_widens_its_band_instead_of_being_left_out():
    """A printed "+0.0034" and "-0.0089" differ in value, not in words."""
    found = cell_bands(stdout("difference +0.0034"), {"aten-avx2": stdout("difference +0.0031")},
                       {"seed-1": stdout("difference -0.0089")}, sanitize)
    assert found.seeds_left_out == [] and len(found.bands) == 1
    assert found.bands[0].stored == "+0.0034" and found.bands[0].tolerance >= 0.0123
    test, ref = align_outputs(stdout("difference -0.0050"), stdout("difference +0.0034"), found.bands, sanitize)
    assert fields(test, str) == fields(ref, str)


def test_a_seed_run_that_prints_other_words_is_named_as_left_out():
    found = cell_bands(stdout("loss 0.51, worst class shirt"), {"aten-avx2": stdout("loss 0.52, worst class shirt")},
                       {"seed-1": stdout("loss 0.55, worst class coat")}, sanitize)
    assert found.problems == [] and len(found.bands) == 1
    assert len(found.seeds_left_out) == 1 and found.seeds_left_out[0].startswith("seed-1: prints other words")


def test_words_that_a_numerics_variant_changes_are_a_problem_named_by_the_variant():
    found = cell_bands(stdout("predicted: shirt"), {"threads-2": stdout("predicted: coat")}, {}, sanitize)
    assert len(found.problems) == 1 and found.problems[0].startswith("threads-2: prints other words")
    assert "shirt" in found.problems[0] and "coat" in found.problems[0]


def test_timings_are_sanitized_before_anything_is_compared():
    assert cell_bands(stdout("took 3.3 s"), {"v": stdout("took 11.4 s")}, {}, sanitize).bands == []


# --- inside nbval's own comparison ------------------------------------------------------------

class Cell:
    """The parts of nbval's IPyNbCell that its comparison uses, with the real methods."""

    compare_outputs = IPyNbCell.compare_outputs  # as extended by the project's conftest.py
    sanitize = IPyNbCell.sanitize
    colors = nocolors

    def __init__(self, bands=()):
        metadata = {METADATA_KEY: {"numbers": 0, "runs": 3, "bands": [b.as_metadata() for b in bands]}}
        self.cell = nbformat.from_dict({"metadata": metadata if bands else {}})
        skip = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
                "image/png", "image/jpeg")
        self.parent = SimpleNamespace(skip_compare=skip,
                                      sanitize_patterns=dict(get_sanitize_patterns(SANITIZE.read_text())))
        self.mismatches: list[tuple] = []

    def format_output_compare(self, key, left, right):
        self.mismatches.append((key, left, right))

    def same(self, test: list, ref: list) -> bool:
        return self.compare_outputs(test, ref)


BANDS = cell_bands(STORED, {"aten-avx2": AVX2}, {"seed-1": SEED}, sanitize).bands


def test_the_extension_is_installed_on_nbval():
    assert getattr(IPyNbCell, "_bands_installed", False)


def test_a_rerun_within_its_bands_and_with_other_timings_passes():
    cell = Cell(BANDS)
    assert cell.same(AVX2, STORED) and cell.same(SEED, STORED)
    assert cell.mismatches == []


def test_the_same_rerun_fails_in_a_cell_without_bands():
    cell = Cell()
    assert not cell.same(AVX2, STORED) and cell.mismatches


def test_timings_of_other_widths_pass_in_a_cell_without_bands():
    """An epoch of 9.8 s and one of 10.1 s are padded differently; nbval must not see it."""
    rows = [(1.1484, 0.552, 0.753, 9.8, 980.0), (0.5335, 0.797, 0.812, 9.9, 12345.0)]
    slower = [(*row[:3], 10.1, 65.0) for row in rows]
    assert History.format_row(EpochStats(1, *rows[0])) != History.format_row(EpochStats(1, *slower[0]))
    cell = Cell()
    assert cell.same(stdout(*training_log(slower)), stdout(*training_log(rows)))
    assert cell.same(stdout("took 9.6 s"), stdout("took 10.4 s"))
    assert cell.mismatches == []


def test_a_number_out_of_its_band_fails():
    drifted = stdout(*training_log([(1.1490, 0.551, 0.755, 9.7, 6186.0), (0.5321, 0.799, 0.700, 11.4, 5263.0)]))
    cell = Cell(BANDS)
    assert not cell.same(drifted, STORED)
    (key, stored, computed), = cell.mismatches
    assert key == "stdout" and "0.700" in computed and "0.812" in stored


def test_a_changed_word_or_an_extra_output_fails():
    cpu_to_cuda = AVX2[:-1] + stdout(AVX2[-1].text.strip().replace("cpu", "cuda"))
    assert not Cell(BANDS).same(cpu_to_cuda, STORED)
    assert not Cell(BANDS).same(AVX2 + [nbformat.v4.new_output("stream", name="stderr", text="warning\n")],
                                STORED)


def test_an_extra_epoch_fails_although_its_numbers_are_close():
    three = stdout(*training_log([(1.1484, 0.552, 0.753, 3.3, 18283.0), (0.5335, 0.797, 0.812, 2.8, 21506.0),
                                  (0.5335, 0.797, 0.812, 2.8, 21506.0)]))
    assert not Cell(BANDS).same(three, STORED)


def test_rich_results_are_compared_within_their_bands_too():
    stored = result("tensor([0.8100, 0.0400])")
    bands = cell_bands(stored, {"v": result("tensor([0.8123, 0.0415])")}, {}, sanitize).bands
    assert Cell(bands).same(result("tensor([0.8123, 0.0415])"), stored)
    assert not Cell(bands).same(result("tensor([0.7900, 0.0400])"), stored)


def test_bands_measured_around_other_stored_outputs_are_refused_as_stale():
    stored_again = stdout(*training_log([(1.1484, 0.552, 0.753, 3.3, 18283.0), (0.5335, 0.797, 0.815, 2.8, 21506.0)]))
    with pytest.raises(StaleCalibration, match="make outputs"):
        align_outputs(AVX2, stored_again, BANDS, sanitize)


# --- end to end: calibrate a small notebook, then pytest --nbval under a variant ----------------

SOURCES = {
    "parameters": "SEED = 0",
    "moving": ('import os\nthreads = int(os.environ.get("D2L_THREADS", "1"))\n'
               'print(f"loss {0.5 + 0.01 * threads + 0.001 * SEED:.4f}")'),
    "exact": 'print(f"shape (1, 6, 28, 28), seed {SEED}")',
    "record": ("import torch\nfrom torch import nn\n"
               "from d2l_utils import EpochStats, History, Profile, record_run\n"
               "history = History([EpochStats(1, 0.5, 0.8, 0.8, 1.0, 100.0)], device='cpu')\n"
               "path = record_run(history, chapter='99_tiny', model='tiny', net=nn.Linear(2, 2),\n"
               "                  profile=Profile('quick', torch.device('cpu'), seed=SEED), hparams={})\n"
               "print('run recorded as', path.name)"),
}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A three-cell notebook whose stored outputs come from a run, calibrated by the real command."""
    from nbclient import NotebookClient

    folder = tmp_path_factory.mktemp("calibrate")
    cells = [nbformat.v4.new_code_cell(source) for source in SOURCES.values()]
    cells[0].metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    env = {k: v for k, v in os.environ.items() if k != "D2L_THREADS"}
    env["D2L_RESULTS_DIR"] = str(folder / "stored")
    NotebookClient(nb, kernel_name="python3").execute(env=env)
    path = folder / "tiny.ipynb"
    nbformat.write(nb, path)
    saved = os.environ.get("D2L_RESULTS_DIR")
    os.environ["D2L_RESULTS_DIR"] = str(folder / "kept")  # where the seed runs' records are kept
    try:
        outcome, = calibrate([path], runs_dir=folder / "runs", sanitize_file=SANITIZE, jobs=2, timeout=300,
                             keep_seed_records=True)
    finally:
        os.environ.pop("D2L_RESULTS_DIR")
        if saved is not None:
            os.environ["D2L_RESULTS_DIR"] = saved
    return folder, path, outcome


def test_calibrate_keeps_the_seed_runs_records_named_as_the_runner_names_them(calibrated):
    folder, _, outcome = calibrated
    kept = sorted(p.relative_to(folder / "kept").as_posix() for p in (folder / "kept").rglob("*.json"))
    assert kept == ["quick/cpu/99_tiny--tiny--seed-1.json", "quick/cpu/99_tiny--tiny--seed-2.json"]
    assert sorted(outcome.seed_records) == sorted((folder / "kept").rglob("*.json"))
    for seed in (1, 2):
        record = json.loads((folder / "kept" / f"quick/cpu/99_tiny--tiny--seed-{seed}.json").read_text())
        assert record["seed"] == seed and record["overrides"] == {"SEED": seed}
    # the seed runs printed the stored run's record name, so their outputs compared word for word
    nb = nbformat.read(folder / "runs" / "tiny" / "seed-1.ipynb", as_version=4)
    assert "99_tiny--tiny.json" in "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    # the stored run wrote its own record where it was told, and nothing went to the project's results/
    assert [p.name for p in (folder / "stored").rglob("*.json")] == ["99_tiny--tiny.json"]
    assert not list((PROJECT / "results").rglob("99_tiny--*"))


def test_calibrate_writes_a_band_where_a_variant_moved_a_number_and_says_how_it_measured(calibrated):
    _, path, outcome = calibrated
    assert outcome.error is None and outcome.problems == []
    nb = nbformat.read(path, as_version=4)
    moving, exact = nb.cells[1], nb.cells[2]
    band, = moving.metadata[METADATA_KEY]["bands"]
    # stored 0.5100; threads-2 gives 0.5200 and the seeds 0.5110 and 0.5120, all runs counted
    assert band["stored"] == "0.5100" and band["max_deviation"] == pytest.approx(0.01)
    # every run counts: the stored one, each numerics variant and each seed
    assert len(NUMERICS_VARIANTS) == 7 and NUMERICS_VARIANTS["native"] == {} and len(SEED_VARIANTS) == 2
    assert band["tolerance"] >= 0.01 and moving.metadata[METADATA_KEY]["runs"] == 1 + 7 + 2
    assert METADATA_KEY not in exact.metadata  # only seeds changed it: stays exact
    how = nb.metadata[CALIBRATION_KEY]
    assert set(how["variants"]) >= {"native", "aten-default", "aten-avx2", "onednn-avx2", "avx2",
                                    "mkl-compatible", "threads-2", "seed-1", "seed-2"}
    assert how["date"] and how["machine"] and "4 x its standard deviation" in how["rule"]
    assert [c.outputs for c in nb.cells] == [c.outputs for c in nbformat.read(
        calibrated[0] / "runs" / "tiny" / "aten-avx2.ipynb", as_version=4).cells]


def run_nbval(folder: Path, notebook: Path, **env: str) -> subprocess.CompletedProcess:
    (folder / "conftest.py").write_text((PROJECT / "conftest.py").read_text())
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env",
         f"--nbval-sanitize-with={SANITIZE}", "-p", "no:cacheprovider", "-q", notebook.name],
        cwd=folder, env={**os.environ, "D2L_RESULTS_DIR": str(folder / "results"), **env},
        capture_output=True, text=True, timeout=300)


def test_pytest_nbval_passes_under_the_calibrated_variant(calibrated):
    folder, path, _ = calibrated
    done = run_nbval(folder, path, D2L_THREADS="2")
    assert done.returncode == 0, done.stdout[-3000:]


def test_pytest_nbval_fails_beyond_the_band(calibrated):
    folder, path, _ = calibrated
    done = run_nbval(folder, path, D2L_THREADS="9")  # loss 0.5900: far outside the measured band
    assert done.returncode == 1 and "0.5900" in done.stdout, done.stdout[-3000:]


def test_calibrate_refuses_what_is_not_a_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a notebook"):
        calibrate([tmp_path / "missing.ipynb"], sanitize_file=SANITIZE)


def test_a_run_past_its_time_fails_the_calibration_and_its_kernel_is_stopped(tmp_path):
    """A run that exceeds the timeout is reported, and its kernel does not go on computing."""
    import time

    marker = tmp_path / "kernel-still-ran"
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("SEED = 0"),
        nbformat.v4.new_code_cell(f"import time\ntime.sleep(12)\nopen({str(marker)!r}, 'w').write('late')")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "slow.ipynb"
    nbformat.write(nb, path)
    before = path.read_bytes()
    outcome, = calibrate([path], runs_dir=tmp_path / "runs", sanitize_file=SANITIZE, jobs=2, timeout=6)
    assert outcome.error and "did not finish in 6 s" in outcome.error and "--timeout" in outcome.error
    assert path.read_bytes() == before  # nothing written
    time.sleep(10)  # a kernel left running (its cell had started) would have written the marker by now
    assert not marker.exists()
