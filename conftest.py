"""pytest set-up for the notebook regression (``pytest --nbval``).

Stored notebook outputs are those of the quick profile on a CPU, so the
kernels started here are pinned to the CPU and write their run records to a
temporary folder instead of ``results/``.

Every cell's words are compared letter by letter. Its numbers are too, except
those that the calibration (``python -m d2l_utils calibrate``) found moving
under other numerics: each of those carries a measured band in the cell's
metadata, and a number within its band counts as equal. The rule and the
comparison are in ``d2l_utils/tolerance.py``; timings are removed first by
the sanitizer (tests/sanitize.cfg).
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("D2L_DEVICE", "cpu")
os.environ.pop("D2L_RUN_OVERRIDES", None)  # nbval checks the chapters' own runs
if "D2L_RESULTS_DIR" not in os.environ:
    os.environ["D2L_RESULTS_DIR"] = tempfile.mkdtemp(prefix="d2l-results-")


def pytest_configure(config):
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:  # nbval not installed: nothing to extend
        return
    if getattr(IPyNbCell, "_bands_installed", False):
        return
    from d2l_utils.tolerance import METADATA_KEY, Band, align_outputs

    exact = IPyNbCell.compare_outputs

    def compare_outputs(self, test, ref, skip_compare=None):
        calibration = self.cell.get("metadata", {}).get(METADATA_KEY)
        if calibration:
            bands = [Band.from_metadata(entry) for entry in calibration["bands"]]
            test, ref = align_outputs(test, ref, bands, self.sanitize)
        return exact(self, test, ref, skip_compare)

    IPyNbCell.compare_outputs = compare_outputs
    IPyNbCell._bands_installed = True
