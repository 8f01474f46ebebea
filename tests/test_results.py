"""Run records: one JSON file per training run, written atomically and read back."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch import nn

import d2l_utils
from d2l_utils import (EpochStats, History, Profile, code_version, device_name, find_run, load_runs,
                       record_run, results_dir, runs_frame, runs_table)
from d2l_utils import results as d2l_results

PROJECT = Path(__file__).resolve().parents[1]
PROFILE = Profile("quick", torch.device("cpu"), seed=3)
HPARAMS = {"epochs": 2, "batch_size": 256, "lr": 0.9, "optimizer": "SGD", "resize": None,
           "train_size": [1000, 500]}


@pytest.fixture(autouse=True)
def results_in_tmp(tmp_path, monkeypatch):
    """Records go to a temporary folder, never to the project's results/."""
    monkeypatch.setenv("D2L_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path / "results"


@pytest.fixture
def history() -> History:
    return History([EpochStats(1, 0.9, 0.61, 0.64, 2.5, 400.0),
                    EpochStats(2, 0.5, 0.81, 0.79, 1.5, 666.6666666666666)], device="cpu")


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))  # 15 + 8 parameters


def files_below(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_record_run_writes_every_field_to_profile_device_chapter_model_json(history, tmp_path):
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    path = record_run(history, chapter="07_alexnet", model="alexnet", net=net(), profile=PROFILE,
                      hparams=HPARAMS, directory=tmp_path / "runs")
    after = dt.datetime.now(dt.timezone.utc)
    assert path == tmp_path / "runs" / "quick" / "cpu" / "07_alexnet--alexnet.json"
    record = json.loads(path.read_text())
    assert record["chapter"] == "07_alexnet" and record["model"] == "alexnet"
    assert record["parameters"] == 23
    assert record["input_shape"] is None and record["macs"] is None  # the history saw no batch
    assert record["depth"] is None and record["overrides"] == {}
    assert record["profile"] == "quick" and record["seed"] == 3 and record["threads"] is None
    assert record["device"] == "cpu" and record["device_name"] == device_name("cpu")
    assert record["torch"] == torch.__version__
    assert record["code_version"] == code_version() != ""
    assert record["hparams"] == HPARAMS
    plain = [{k: v for k, v in asdict(s).items() if k != "val_acc"} for s in history.epochs]
    assert record["epochs"] == plain  # no validation set: no val_acc, the form chapter 16 reads
    assert record["final"] == plain[-1]
    assert record["parameters_total"] == 23
    assert "sizes" not in record and "test_predictions" not in record
    assert record["wall_time"] == 4.0
    date = dt.datetime.fromisoformat(record["date"])
    assert date.tzinfo is not None and before <= date <= after


def test_a_record_counts_the_multiply_accumulates_for_the_trained_input_shape(history, tmp_path):
    history.input_shape = (4,)
    profile = Profile("quick", torch.device("cpu"), seed=3, threads=1)
    path = record_run(history, chapter="07_alexnet", model="alexnet", net=net(), profile=profile,
                      hparams=HPARAMS, directory=tmp_path)
    record = json.loads(path.read_text())
    assert record["input_shape"] == [4] and record["macs"] == 4 * 3 + 3 * 2
    assert record["depth"] == 2
    assert record["threads"] == 1


def test_a_record_counts_the_trainable_parameters_and_all_of_them(history, tmp_path):
    frozen = net()
    frozen[0].weight.requires_grad_(False)  # 12 of the 23 scalars stay as they are
    record = json.loads(record_run(history, chapter="11_batch_norm", model="frozen", net=frozen,
                                   profile=PROFILE, hparams=HPARAMS, directory=tmp_path).read_text())
    assert record["parameters"] == 11 and record["parameters_total"] == 23


def test_a_record_keeps_the_whole_runs_time_when_given_and_refuses_a_time_below_training(history, tmp_path):
    path = record_run(history, chapter="15_training_fast", model="net", net=net(), profile=PROFILE,
                      hparams=HPARAMS, directory=tmp_path, fit_seconds=5.04)
    assert json.loads(path.read_text())["fit_seconds"] == 5.0
    assert "fit_seconds" not in json.loads(record_run(
        history, chapter="15_training_fast", model="other", net=net(), profile=PROFILE, hparams=HPARAMS,
        directory=tmp_path).read_text())
    for wrong in (3.9, "5 s"):  # the epochs alone trained for 4.0 s
        with pytest.raises(ValueError, match="fit_seconds must be a number of seconds at least"):
            record_run(history, chapter="15_training_fast", model="bad", net=net(), profile=PROFILE,
                       hparams=HPARAMS, directory=tmp_path, fit_seconds=wrong)
    assert not (tmp_path / "quick" / "cpu" / "15_training_fast--bad.json").exists()


def test_an_older_record_without_a_total_reads_with_the_total_unknown(history, tmp_path):
    path = record_run(history, chapter="06_lenet", model="lenet", net=net(), profile=PROFILE,
                      hparams=HPARAMS, directory=tmp_path)
    older = json.loads(path.read_text())
    del older["parameters_total"]
    path.write_text(json.dumps(older))
    [run] = load_runs(tmp_path)
    assert run["parameters"] == 23 and run["parameters_total"] is None
    assert d2l_results.read_run(path)["parameters_total"] is None


def test_every_committed_record_reads_with_a_total_no_smaller_than_its_trainable_count():
    runs = load_runs(PROJECT / "results")
    assert runs, "no committed records under results/"
    for run in runs:
        assert run["parameters"] > 0, run["path"]
        assert run["parameters_total"] is None or run["parameters_total"] >= run["parameters"], run["path"]
    assert any(run["parameters_total"] is not None for run in runs)


def test_records_go_to_d2l_results_dir_by_default(history, results_in_tmp):
    assert results_dir() == results_in_tmp
    path = record_run(history, chapter="06_lenet", model="lenet", net=net(), profile=PROFILE,
                      hparams=HPARAMS)
    assert path == results_in_tmp / "quick" / "cpu" / "06_lenet--lenet.json"


def test_the_projects_results_folder_ignores_d2l_results_dir(results_in_tmp):
    assert d2l_utils.project_results_dir() == PROJECT / "results" != results_dir()


def test_without_d2l_results_dir_records_go_to_the_projects_results_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("D2L_RESULTS_DIR")
    monkeypatch.chdir(tmp_path)  # not inside the project: found from the package's own location
    assert results_dir() == PROJECT / "results"
    monkeypatch.chdir(PROJECT / "notebooks")
    assert results_dir() == PROJECT / "results"


def test_no_temporary_file_is_left_behind(history, tmp_path):
    for model in ("a", "b", "a"):  # the second "a" replaces the first
        record_run(history, chapter="06_lenet", model=model, net=net(), profile=PROFILE,
                   hparams=HPARAMS, directory=tmp_path)
    assert files_below(tmp_path) == ["quick/cpu/06_lenet--a.json", "quick/cpu/06_lenet--b.json"]


@pytest.mark.parametrize("bad", [object(), torch.tensor(0.1), float("nan"), {1, 2}],
                         ids=["object", "tensor", "nan", "set"])
def test_hparams_that_are_not_json_raise_type_error_and_write_nothing(history, tmp_path, bad):
    with pytest.raises(TypeError, match="hparams"):
        record_run(history, chapter="06_lenet", model="lenet", net=net(), profile=PROFILE,
                   hparams={"lr": bad}, directory=tmp_path)
    assert files_below(tmp_path) == []


def test_a_failed_write_keeps_the_previous_record_and_leaves_no_temporary_file(
        history, tmp_path, monkeypatch):
    path = record_run(history, chapter="06_lenet", model="lenet", net=net(), profile=PROFILE,
                      hparams=HPARAMS, directory=tmp_path)
    previous = path.read_text()

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch, pytest.raises(OSError, match="No space"):
        patch.setattr(d2l_results.os, "replace", disk_full)
        record_run(history, chapter="06_lenet", model="lenet", net=net(), profile=PROFILE,
                   hparams={**HPARAMS, "epochs": 99}, directory=tmp_path)
    assert path.read_text() == previous
    assert files_below(tmp_path) == ["quick/cpu/06_lenet--lenet.json"]


def test_an_empty_history_is_not_recorded(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        record_run(History(), chapter="06_lenet", model="lenet", net=net(), profile=PROFILE,
                   hparams=HPARAMS, directory=tmp_path)
    assert files_below(tmp_path) == []


def test_load_runs_reads_every_record_back_sorted_by_path(history, tmp_path):
    written = [
        record_run(history, chapter="08_vgg", model="vgg-11", net=net(), profile=PROFILE,
                   hparams=HPARAMS, directory=tmp_path),
        record_run(history, chapter="06_lenet", model="lenet", net=net(), profile=PROFILE,
                   hparams=HPARAMS, directory=tmp_path),
    ]
    # A record from another machine, as it would arrive in results/full/cuda/.
    gpu_record = json.loads(written[1].read_text()) | {"profile": "full", "device": "cuda"}
    gpu_path = tmp_path / "full" / "cuda" / "06_lenet--lenet.json"
    gpu_path.parent.mkdir(parents=True)
    gpu_path.write_text(json.dumps(gpu_record))
    runs = load_runs(tmp_path)
    assert [r["path"] for r in runs] == ["full/cuda/06_lenet--lenet.json",
                                         "quick/cpu/06_lenet--lenet.json",
                                         "quick/cpu/08_vgg--vgg-11.json"]
    assert runs[1] == json.loads(written[1].read_text()) | {"path": "quick/cpu/06_lenet--lenet.json",
                                                            "test_acc": runs[1]["final"]["test_acc"]}
    assert runs[2]["model"] == "vgg-11" and runs[0]["device"] == "cuda"


def test_load_runs_gives_every_record_its_test_accuracy(history, tmp_path):
    """A run tested once at the end keeps its score; one tested every epoch takes its last epoch's."""
    per_epoch = record_run(history, chapter="06_lenet", model="lenet", net=net(), profile=PROFILE,
                           hparams=HPARAMS, directory=tmp_path)
    history.test_acc = 0.9123
    once = record_run(history, chapter="06_lenet", model="lenet-once", net=net(), profile=PROFILE,
                      hparams=HPARAMS, directory=tmp_path)
    assert "test_acc" not in json.loads(per_epoch.read_text())
    by_model = {r["model"]: r for r in load_runs(tmp_path)}
    assert by_model["lenet"]["test_acc"] == history.epochs[-1].test_acc is not None
    assert by_model["lenet-once"]["test_acc"] == 0.9123 != history.epochs[-1].test_acc


def test_load_runs_defaults_to_the_results_folder(history, results_in_tmp):
    record_run(history, chapter="06_lenet", model="lenet", net=net(), profile=PROFILE,
               hparams=HPARAMS)
    assert [r["model"] for r in load_runs()] == ["lenet"]


def test_code_version_names_the_checked_out_commit():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True,
                          text=True, check=True).stdout.strip()
    tags = subprocess.run(["git", "tag", "--points-at", "HEAD"], cwd=PROJECT, capture_output=True,
                          text=True, check=True).stdout.split()
    version = code_version().removesuffix("-dirty")
    assert head[:12] in version or version in tags


def test_code_version_without_git_is_the_package_version(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory: 'git'")

    monkeypatch.setattr(d2l_results.subprocess, "run", no_git)
    assert code_version() == d2l_utils.__version__



def test_variant_names_list_the_overrides_sorted_and_safe_for_file_names():
    assert d2l_results.variant_name({"LR": 0.1, "BATCH_SIZE": 64}) == "batch_size-64--lr-0.1"
    assert d2l_results.variant_name({"NAME": "a b/c"}) == "name-a_b_c"


@pytest.mark.parametrize("text", ["EPOCHS=3", "[1, 2]"])
def test_overrides_that_are_not_a_json_object_are_an_error(monkeypatch, text):
    monkeypatch.setenv("D2L_RUN_OVERRIDES", text)
    with pytest.raises(ValueError, match="D2L_RUN_OVERRIDES must hold a JSON object"):
        d2l_results.run_overrides()


def test_find_run_picks_the_record_by_model_and_exact_overrides(history, tmp_path, monkeypatch):
    record_run(history, chapter="06_lenet", model="lenet", net=net(), profile=PROFILE,
               hparams=HPARAMS, directory=tmp_path)
    monkeypatch.setenv(d2l_results.OVERRIDES_ENV, json.dumps({"EPOCHS": 10}))
    record_run(history, chapter="06_lenet", model="lenet", net=net(), profile=PROFILE,
               hparams=HPARAMS | {"epochs": 10}, directory=tmp_path)
    runs = load_runs(tmp_path)
    assert find_run(runs, "lenet")["overrides"] == {}
    assert find_run(runs, "lenet", {"EPOCHS": 10})["hparams"]["epochs"] == 10
    with pytest.raises(LookupError, match=r"no record of 'lenet' with overrides \{'EPOCHS': 3\}.*-p EPOCHS 3"):
        find_run(runs, "lenet", {"EPOCHS": 3})
    with pytest.raises(LookupError, match="models: lenet"):
        find_run(runs, "vgg")


def test_runs_table_lines_up_one_row_per_record(history, tmp_path):
    history.test_acc = 0.9123
    path = record_run(history, chapter="06_lenet", model="lenet", net=net(), profile=PROFILE,
                      hparams=HPARAMS, directory=tmp_path)
    run = load_runs(tmp_path)[0]
    assert d2l_results.read_run(path) == run | {"path": str(path)}
    with_val = run | {"final": run["final"] | {"val_acc": 0.8}}
    lines = runs_table({"LeNet": run, "a longer label": with_val}).splitlines()
    assert [len(line) for line in lines] == [len(lines[0])] * 3
    assert lines[0].split() == ["run", "parameters", "epochs", "train", "acc", "val", "acc", "test", "acc"]
    assert lines[1].split() == ["LeNet", "23", "2", "0.810", "-", "0.912"]
    assert lines[2].split() == ["a", "longer", "label", "23", "2", "0.810", "0.800", "0.912"]
    assert path.exists()


def _recipe_run(history, tmp_path, model, predictions, **extra):
    """A record as a run under the shared recipe writes it: sizes, a schedule, test predictions."""
    history.test_acc, history.predictions = 0.75, torch.tensor(predictions)
    return record_run(history, chapter="12_resnet", model=model, net=net(), profile=PROFILE,
                      hparams=HPARAMS | {"schedule": "one-cycle"} | extra, directory=tmp_path,
                      sizes=d2l_results.RECIPE_SIZES)


def test_runs_frame_has_one_row_per_record_with_sizes_counts_and_speed(history, tmp_path):
    _recipe_run(history, tmp_path, "resnet", [3, 1, 4, 1])
    history.test_acc, history.predictions = None, None
    record_run(history, chapter="06_lenet", model="lenet", net=net(), profile=PROFILE,
               hparams=HPARAMS, directory=tmp_path)
    frame = runs_frame(load_runs(tmp_path))
    assert list(frame["name"]) == ["06 lenet", "12 resnet"]
    resnet, lenet = frame.iloc[1], frame.iloc[0]
    assert (resnet["train_size"], resnet["val_size"], resnet["test_size"]) == (55_000, 5_000, 10_000)
    assert resnet["examples_per_sec"] == pytest.approx(55_000 * 2 / history.wall_time)
    assert resnet["recipe"] and resnet["test_predictions"] == "3141" and resnet["test_acc"] == 0.75
    assert resnet["parameters"] == resnet["parameters_total"] == 23 and resnet["epochs"] == 2
    assert resnet["schedule"] == "one-cycle" and resnet["variant"] == "" and resnet["seed"] == 3
    # an older record without sizes: its counts and speed are missing, not guessed
    assert not lenet["recipe"] and frame["train_size"].isna().iloc[0]
    assert frame["examples_per_sec"].isna().iloc[0]
    assert lenet["test_acc"] == history.epochs[-1].test_acc


def test_runs_frame_names_a_variant_by_its_overrides_and_reads_an_unknown_total_as_missing(
        history, tmp_path, monkeypatch):
    monkeypatch.setenv(d2l_results.OVERRIDES_ENV, json.dumps({"SEED": 1}))
    path = _recipe_run(history, tmp_path, "resnet", [0, 0])
    older = json.loads(path.read_text())
    del older["parameters_total"]
    path.write_text(json.dumps(older))
    frame = runs_frame(load_runs(tmp_path))
    assert frame["variant"].tolist() == ["seed-1"] and frame["overrides"].tolist() == [{"SEED": 1}]
    assert frame["parameters_total"].isna().all() and frame["parameters"].tolist() == [23]


def test_runs_frame_of_no_records_is_empty_with_the_columns():
    frame = runs_frame([])
    assert frame.empty and {"name", "test_acc", "parameters_total", "recipe"} <= set(frame.columns)


def test_runs_frame_reads_every_committed_record():
    runs = load_runs(PROJECT / "results")
    frame = runs_frame(runs)
    assert len(frame) == len(runs) > 0
    recipe = frame[frame["recipe"]]
    assert (recipe["train_size"] == 55_000).all() and recipe["test_predictions"].str.len().eq(10_000).all()
