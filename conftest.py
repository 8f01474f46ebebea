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


def _stored_seconds(path) -> float:
    """How long a notebook's stored run took, from its cells' execution times."""
    import json
    from datetime import datetime
    from pathlib import Path

    try:
        cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        return 0.0
    total = 0.0
    for cell in cells:
        run = cell.get("metadata", {}).get("execution", {})
        try:
            start = datetime.fromisoformat(run["iopub.execute_input"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(run["shell.execute_reply"].replace("Z", "+00:00"))
        except (KeyError, ValueError):
            continue
        total += (end - start).total_seconds()
    return total


def pytest_collection_modifyitems(session, config, items):
    """Longest files first. With ``-n 2 --dist loadfile`` each worker takes whole files in
    this order, so the long ones (the notebooks that train, the test modules that run
    notebooks, which say how long they take in ``RUN_SECONDS``) start early and the short
    ones fill the end, instead of one long file running alone at the end. The cells of a
    notebook and the tests of a module keep their order."""
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(str(item.path), []).append(item)

    def seconds(path: str) -> float:
        first = groups[path][0]
        if path.endswith(".ipynb"):
            return _stored_seconds(path)
        return float(getattr(getattr(first, "module", None), "RUN_SECONDS", 0))

    order = sorted(groups, key=lambda path: -seconds(path))  # stable: ties keep their order
    items[:] = [item for path in order for item in groups[path]]
