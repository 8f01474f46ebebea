"""The `full` profile (the GPU recipe) runs every chapter end to end, here on the CPU.

No GPU is at hand, so each notebook runs through the command-line runner with
``--profile full --device cpu``: the full recipe's code path, with its classic
input sizes (224 or 96 pixels), full-width networks and full batch sizes, only
with one epoch and, where the notebook has the knobs, 256 training and test
images. The runs must finish without error and their records must say that the
full recipe ran at the classic size. The numbers they reach are not checked:
one epoch on a few hundred images teaches nothing. The MACs per image of each
chapter's main network must be those from which its estimated GPU time is computed
(d2l_utils/estimate.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from papermill import inspect_notebook

from d2l_utils import load_runs
from d2l_utils.estimate import FULL_RUNS
from d2l_utils.notebooks import run_notebooks

ROOT = Path(__file__).resolve().parents[1]
# About how long this module takes on one thread of a 2-core machine (every chapter runs once under the full profile),
# measured on 2026-12-03; conftest.py starts the longest files first.
RUN_SECONDS = 750
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# One thread, so that this file and the other pytest worker's notebook share two cores fairly.
SHRINK = {"EPOCHS": 1, "STEPS": 20, "TRAIN_SIZE": 256, "VAL_SIZE": 100, "TEST_SIZE": 256, "THREADS": 1}
# The classic input side of the full recipe, as the chapters' issue fixes it; 28 elsewhere.
CLASSIC_SIDE = {"07": 224, "08": 224, "09": 224, "10": 96, "12": 96, "13": 96, "14": 96}


def shrunk_parameters(notebook: Path) -> dict:
    """One epoch, and 256 images where the notebook lets the training set be shrunk."""
    known = inspect_notebook(str(notebook))
    return {name: value for name, value in SHRINK.items() if name in known}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_the_full_recipe_runs_at_the_classic_input_size(notebook, tmp_path, monkeypatch):
    monkeypatch.setenv("D2L_RESULTS_DIR", str(tmp_path / "results"))
    before = notebook.read_bytes()
    parameters = shrunk_parameters(notebook)
    [outcome] = run_notebooks([notebook], profile="full", device="cpu", parameters=parameters,
                              output_dir=tmp_path / "runs")
    assert outcome.error is None, f"{notebook.name} fails under the full profile:\n{outcome.error}"
    assert notebook.read_bytes() == before, f"{notebook.name} was written by a run"

    executed = json.loads(outcome.output.read_text())
    printed = ["".join(output.get("text", "")) for cell in executed["cells"]
               for output in cell.get("outputs", [])]
    profile_line = next(text for text in printed if "profile" in text)
    assert profile_line.startswith("profile 'full' on cpu"), profile_line[:200]

    records = load_runs(tmp_path / "results")
    trains = "EPOCHS" in parameters  # chapters 2 to 5 train nothing worth a record
    assert bool(records) == trains, f"{notebook.name}: {len(records)} run records"
    side = CLASSIC_SIDE.get(notebook.stem[:2], 28)
    for run in records:
        assert (run["profile"], run["device"]) == ("full", "cpu")
        assert run["overrides"] == parameters
        assert len(run["epochs"]) == 1
        assert run["input_shape"] == [1, side, side], f"{run['model']} trained at {run['input_shape']}"
    estimated = [r for r in FULL_RUNS if r.chapter == notebook.stem]
    for estimate in estimated:
        [run] = [r for r in records if r["model"] == estimate.model] or [None]
        assert run is not None, f"no record of {estimate.model}, whose GPU time d2l_utils/estimate.py estimates"
        assert (run["macs"], run["input_shape"]) == (estimate.macs_per_image, [1, estimate.side, estimate.side])
