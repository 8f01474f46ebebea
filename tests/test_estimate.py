"""The estimated GPU time of each chapter's full run (d2l_utils/estimate.py), where the book states it,
and the full runs measured on a GPU (the records in results/full/cuda/), where the book reports them."""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path

import pytest
import torchvision

from d2l_utils import count_macs, load_splits
from d2l_utils.estimate import (ASSUMED_MACS_PER_SECOND, FULL_RUNS, RESNET50_MACS, T4_RESNET50_IMAGES_PER_SECOND,
                                estimate_gpu_seconds, estimates_table, format_estimate, format_measured,
                                measured_runs, measured_table, training_macs)

ROOT = Path(__file__).resolve().parents[1]


def test_the_assumed_rate_is_the_t4_resnet50_throughput_times_resnet50s_counted_macs():
    assert count_macs(torchvision.models.resnet50(), (3, 224, 224)) == RESNET50_MACS
    assert ASSUMED_MACS_PER_SECOND == T4_RESNET50_IMAGES_PER_SECOND * RESNET50_MACS
    assert 4.8e12 < ASSUMED_MACS_PER_SECOND < 5.0e12  # the "about 4.9 x 10^12" of the prose


def test_a_run_costs_three_passes_per_training_image_and_one_per_held_out_image():
    # 2 epochs x (3 x 100 training + 10 validation images) + 2 flipped passes x 20 test images
    assert training_macs(1000, epochs=2, train_images=100, val_images=10, test_images=20,
                         test_passes=2) == 1000 * (2 * 310 + 40)
    assert estimate_gpu_seconds(1000, epochs=2, train_images=100, macs_per_second=1e5) == pytest.approx(6.0)


@pytest.mark.parametrize("arguments, message", [
    (dict(macs_per_image=0, epochs=1, train_images=1), "macs_per_image must be a positive int"),
    (dict(macs_per_image=10, epochs=1.5, train_images=1), "epochs must be a positive int"),
    (dict(macs_per_image=10, epochs=1, train_images=1, val_images=-1), "val_images must be a non-negative"),
    (dict(macs_per_image=10, epochs=1, train_images=1, macs_per_second=0), "macs_per_second must be positive"),
])
def test_bad_arguments_are_refused_with_their_name(arguments, message):
    with pytest.raises(ValueError, match=message):
        estimate_gpu_seconds(**arguments)


def test_durations_are_rounded_to_minutes():
    assert format_estimate(59) == "under a minute"
    assert format_estimate(89) == "about 1 minute"
    assert format_estimate(333) == "about 6 minutes"


def full_settings(notebook: Path) -> dict:
    """What a chapter's code sets for its full profile: epochs, input side, validation images, test flips."""
    nb = json.loads(notebook.read_text())
    settings = {"side": 28, "val_images": inspect.signature(load_splits).parameters["validation"].default,
                "flip_test": False}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        try:
            tree = ast.parse("".join(cell["source"]))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and "parameters" in cell["metadata"].get("tags", []):
                if [getattr(t, "id", None) for t in node.targets] == ["VAL_SIZE"]:
                    settings["val_images"] = ast.literal_eval(node.value)
            if not isinstance(node, ast.Call):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            if getattr(node.func, "attr", None) == "pick" and node.args:
                name = ast.literal_eval(node.args[0])
                full = ast.literal_eval(keywords["full"])
                if name == "EPOCHS":
                    settings.setdefault("epochs", full)
                elif name == "RESIZE" and full is not None:
                    settings["side"] = full
            if "flip_test" in keywords and getattr(keywords["flip_test"], "value", None) is True:
                settings["flip_test"] = True
    return settings


@pytest.mark.parametrize("run", FULL_RUNS, ids=lambda run: run.chapter)
def test_each_estimate_uses_the_settings_of_the_chapters_full_profile(run):
    settings = full_settings(ROOT / "notebooks" / f"{run.chapter}.ipynb")
    assert (run.epochs, run.side, run.val_images, run.flip_test) == (
        settings["epochs"], settings["side"], settings["val_images"], settings["flip_test"]), settings
    assert run.train_images + run.val_images == 60_000 and run.test_images == 10_000


def test_the_readme_table_is_the_one_the_command_prints():
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- python -m d2l_utils full-estimates -->\n(.*?)\n<!-- end -->", readme, re.S)
    assert found, "README.md lacks the table of estimates between its two markers"
    assert found.group(1) == estimates_table(), "rerun `python -m d2l_utils full-estimates` into README.md"


@pytest.mark.parametrize("run", FULL_RUNS, ids=lambda run: run.chapter)
def test_each_chapter_states_its_estimate_and_calls_it_one(run):
    nb = json.loads((ROOT / "notebooks" / f"{run.chapter}.ipynb").read_text())
    prose = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
    stating = [text for text in prose if "estimate" in text and "full-estimates" in text]
    assert len(stating) == 1, f"{run.chapter} should state its estimated GPU time in one Markdown cell"
    assert format_estimate(run.seconds) in stating[0] and f"{run.macs_per_image:,}" in stating[0]
    assert "an estimate, not a measurement" in stating[0]


MEASURED = {(run["chapter"], run["model"]): run for run in measured_runs()}


def estimate_cell(chapter: str) -> str:
    """The chapter's note on its GPU time, with its line breaks as spaces."""
    nb = json.loads((ROOT / "notebooks" / f"{chapter}.ipynb").read_text())
    [text] = ["".join(c["source"]) for c in nb["cells"]
              if c["cell_type"] == "markdown" and "full-estimates" in "".join(c["source"])]
    return " ".join(text.split())


@pytest.mark.parametrize("run", FULL_RUNS, ids=lambda run: run.chapter)
def test_each_chapter_reports_its_measured_gpu_run_or_says_there_is_none(run):
    text = estimate_cell(run.chapter)
    measured = MEASURED.get((run.chapter, run.model))
    if measured is None:
        assert "no run of this chapter on a GPU has been measured" in text
        return
    assert format_measured(measured) in text and Path(measured["path"]).name in text
    assert measured["device_name"] in text and measured["date"][:10] in text
    # the run measured is the one estimated: same network, input, epochs and images
    assert (measured["macs"], measured["input_shape"], len(measured["epochs"])) == (
        run.macs_per_image, [1, run.side, run.side], run.epochs)
    assert measured["sizes"] == {"train": run.train_images, "val": run.val_images, "test": run.test_images}
    assert (measured["profile"], measured["device"], measured["overrides"]) == ("full", "cuda", {})


def test_every_gpu_record_is_a_full_run_on_cuda_with_its_machine_named():
    assert MEASURED, "results/full/cuda/ holds no records"
    for run in MEASURED.values():
        assert (run["profile"], run["device"], run["overrides"]) == ("full", "cuda", {}), run["path"]
        assert run["device_name"] and run["torch"] and run["date"], run["path"]


def test_the_readme_lists_the_gpu_records_as_the_command_prints_them():
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- python -m d2l_utils full-measured -->\n(.*?)\n<!-- end -->", readme, re.S)
    assert found, "README.md lacks the table of measured GPU runs between its two markers"
    assert found.group(1) == measured_table(), "rerun `python -m d2l_utils full-measured` into README.md"


def test_the_measured_table_and_sentence_come_from_the_record(tmp_path):
    record = {"chapter": "00_x", "model": "net", "input_shape": [1, 96, 96], "epochs": [{}] * 3,
              "final": {"val_acc": 0.91234}, "test_acc": 0.9256, "wall_time": 125.0, "precision": None,
              "device_name": "Some GPU", "torch": "2.0", "date": "2026-01-02T03:04:05+00:00",
              "profile": "full", "device": "cuda", "overrides": {}}
    (tmp_path / "00_x--net.json").write_text(json.dumps(record))
    [run] = measured_runs(tmp_path)
    assert format_measured(run) == "0.926 test accuracy after 3 epochs in 2.1 min"
    assert measured_table([run]).splitlines()[2] == (
        "| 00_x--net | 96x96 | 3 | float32 | 0.912 | 0.926 | 2.1 min | Some GPU | 2.0 | 2026-01-02 |")
    assert measured_runs(tmp_path / "absent") == []
