"""pytest set-up for the notebook regression (``pytest --nbval``).

Stored notebook outputs are those of the quick profile on a CPU, so the
kernels started here are pinned to the CPU and write their run records to a
temporary folder instead of ``results/``.

Training logs are not bit-identical across thread counts and CPUs (the order
of floating-point sums changes). A cell tagged ``nbval-approx`` therefore has
its numbers compared with a tolerance instead of letter by letter: every
number of the new output must be within ``ABS_TOL + REL_TOL * |stored|`` of the
stored one, and all the text between numbers must be the same (runs of spaces,
which pad columns, may differ in length). Timings are removed before that by
the sanitizer (tests/sanitize.cfg).
"""

from __future__ import annotations

import os
import re
import tempfile

import pytest

ABS_TOL = 0.01
REL_TOL = 0.01
APPROX_TAG = "nbval-approx"
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")
SPACES = re.compile(r"[ \t]+")

os.environ.setdefault("D2L_DEVICE", "cpu")
os.environ.pop("D2L_RUN_OVERRIDES", None)  # nbval checks the chapters' own runs
if "D2L_RESULTS_DIR" not in os.environ:
    os.environ["D2L_RESULTS_DIR"] = tempfile.mkdtemp(prefix="d2l-results-")


def close_enough(test: str, ref: str) -> bool:
    """True when two numbers (as printed) agree within the stated tolerance."""
    t, r = float(test.replace(",", "")), float(ref.replace(",", ""))
    return abs(t - r) <= ABS_TOL + REL_TOL * abs(r)


def align_numbers(test: str, ref: str) -> str:
    """``test`` with each number replaced by the stored one where they agree within tolerance.

    Text whose words differ from the stored text, or numbers out of tolerance,
    are left as they are, so the exact comparison that follows still fails.
    Runs of spaces count as one: a right-aligned column is padded to the width
    of its number, which changes when a time goes from 9.8 s to 10.3 s.
    """
    test_words, ref_words = NUMBER.split(test), NUMBER.split(ref)
    if [SPACES.sub(" ", w) for w in test_words] != [SPACES.sub(" ", w) for w in ref_words]:
        return test
    test_numbers, ref_numbers = NUMBER.findall(test), NUMBER.findall(ref)
    merged = [r if close_enough(t, r) else t for t, r in zip(test_numbers, ref_numbers)]
    out = [ref_words[0]]
    for number, word in zip(merged, ref_words[1:]):
        out += [number, word]
    return "".join(out)


def _align_outputs(test: list, ref: list) -> list:
    """Outputs of ``test`` with their text aligned, output by output, to ``ref``."""
    aligned = []
    for out, stored in zip(test, ref):
        out = out.copy()
        if out.get("output_type") == stored.get("output_type"):
            if "text" in out and "text" in stored:
                out["text"] = align_numbers(out["text"], stored["text"])
            plain_out, plain_ref = out.get("data", {}).get("text/plain"), stored.get("data", {}).get("text/plain")
            if plain_out is not None and plain_ref is not None:
                out["data"] = {**out["data"], "text/plain": align_numbers(plain_out, plain_ref)}
        aligned.append(out)
    return aligned + test[len(ref):]


def _sanitized(cell, outputs: list) -> list:
    """Streams joined and the sanitizer applied, so timings are gone before numbers are compared."""
    from nbval.plugin import coalesce_streams

    result = []
    for output in coalesce_streams(outputs):
        output = output.copy()
        if "text" in output:
            output["text"] = cell.sanitize(output["text"])
        if "data" in output:
            output["data"] = {k: cell.sanitize(v) for k, v in output["data"].items()}
        result.append(output)
    return result


def pytest_configure(config):
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:  # nbval not installed: nothing to extend
        return
    if getattr(IPyNbCell, "_approx_installed", False):
        return
    exact = IPyNbCell.compare_outputs

    def compare_outputs(self, test, ref, skip_compare=None):
        if APPROX_TAG in self.cell.get("metadata", {}).get("tags", []):
            ref = _sanitized(self, ref)
            test = _align_outputs(_sanitized(self, test), ref)
        return exact(self, test, ref, skip_compare)

    IPyNbCell.compare_outputs = compare_outputs
    IPyNbCell._approx_installed = True
