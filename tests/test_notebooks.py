"""Running notebooks by profile: checks before running, failures reported, sources untouched."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from d2l_utils import load_runs
from d2l_utils.__main__ import main
from d2l_utils.notebooks import (parse_value, readers_reminder, record_digests, record_readers, run_notebooks,
                                 store_outputs)


def make_notebook(path: Path, body: str) -> Path:
    params = nbformat.v4.new_code_cell('PROFILE = None\nDEVICE = "auto"\nEPOCHS = None')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def good(tmp_path):
    return make_notebook(tmp_path / "good.ipynb", "print(PROFILE, DEVICE, EPOCHS)")


@pytest.fixture
def bad(tmp_path):
    return make_notebook(tmp_path / "bad.ipynb", "raise ValueError('broken on purpose')")


def printed(nb_path: Path) -> str:
    nb = nbformat.read(nb_path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_parse_value_reads_numbers_none_and_booleans():
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("0.05") == 0.05
    assert parse_value("None") is None
    assert parse_value("true") is True
    assert parse_value("sgd") == "sgd"


def test_a_run_writes_the_executed_copy_and_leaves_the_source_alone(good, tmp_path):
    before = good.read_bytes()
    [outcome] = run_notebooks([good], profile="full", device="cpu", parameters={"EPOCHS": 3},
                              output_dir=tmp_path / "runs")
    assert outcome.error is None
    assert outcome.output == tmp_path / "runs" / "full-cpu" / "good--epochs-3.ipynb"
    assert printed(outcome.output).strip() == "full cpu 3"
    assert good.read_bytes() == before


def test_a_failing_notebook_is_reported_and_the_others_still_run(good, bad, tmp_path, capsys):
    status = main(["run", str(bad), str(good), "--profile", "quick", "--device", "cpu",
                   "--output-dir", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert status == 1
    assert "FAILED" in out and "bad.ipynb" in out and "ValueError: broken on purpose" in out
    assert "1 passed, 1 failed" in out
    assert (tmp_path / "runs" / "quick-cpu" / "good.ipynb").is_file()


@pytest.mark.parametrize("args, message", [
    (["--profile", "fast"], "invalid choice: 'fast'"),
    (["--profile", "quick", "--device", "tpu"], "invalid choice: 'tpu'"),
])
def test_unknown_profile_or_device_is_refused_by_the_command(good, args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(good), *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_parameter_name_is_refused_before_anything_runs(good, bad, tmp_path, capsys):
    status = main(["run", str(good), str(bad), "--profile", "quick", "-p", "EPOCS", "3",
                   "--output-dir", str(tmp_path / "runs")])
    assert status == 2
    assert "has no parameter EPOCS" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_run_notebooks_rejects_unknown_profile_before_running(good, tmp_path):
    with pytest.raises(ValueError, match="unknown profile 'medium'"):
        run_notebooks([good], profile="medium", output_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_store_outputs_keeps_the_notebook_when_a_cell_fails(bad):
    before = bad.read_bytes()
    with pytest.raises(Exception, match="broken on purpose"):
        store_outputs(bad)
    assert bad.read_bytes() == before
    assert not list(bad.parent.glob("*.tmp"))


def test_store_outputs_saves_outputs_in_place(good):
    store_outputs(good)
    assert printed(good).strip() == "None auto None"


RECORDING = """
import torch
from d2l_utils import EpochStats, History, choose_profile, record_run
profile = choose_profile(PROFILE, "cpu")
history = History([EpochStats(1, 0.5, 0.8, 0.7, 1.0, 100.0)], input_shape=(3,))
print(record_run(history, chapter="toy", model="linear", net=torch.nn.Linear(3, 2),
                 profile=profile, hparams={"epochs": EPOCHS}).name)
"""


def test_runs_with_overrides_are_recorded_as_variants_beside_the_chapters_own_run(
        tmp_path, monkeypatch):
    monkeypatch.setenv("D2L_RESULTS_DIR", str(tmp_path / "results"))
    nb = make_notebook(tmp_path / "toy.ipynb", RECORDING)
    plain, = run_notebooks([nb], profile="quick", device="cpu", output_dir=tmp_path / "runs")
    variant, = run_notebooks([nb], profile="quick", device="cpu", parameters={"EPOCHS": 5},
                             output_dir=tmp_path / "runs")
    assert plain.error is None and variant.error is None
    assert printed(plain.output).strip() == "toy--linear.json"
    assert printed(variant.output).strip() == "toy--linear--epochs-5.json"
    assert plain.output != variant.output  # neither executed copy replaces the other
    records = {r["path"]: r for r in load_runs(tmp_path / "results")}
    assert records["quick/cpu/toy--linear.json"]["overrides"] == {}
    assert records["quick/cpu/toy--linear--epochs-5.json"]["overrides"] == {"EPOCHS": 5}
    assert records["quick/cpu/toy--linear--epochs-5.json"]["hparams"] == {"epochs": 5}
    assert "D2L_RUN_OVERRIDES" not in os.environ  # the runner put the environment back


def test_storing_outputs_ignores_overrides_left_in_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("D2L_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("D2L_RUN_OVERRIDES", '{"EPOCHS": 5}')
    nb = make_notebook(tmp_path / "toy.ipynb", RECORDING)
    store_outputs(nb)
    assert printed(nb).strip() == "toy--linear.json"
    assert os.environ["D2L_RUN_OVERRIDES"] == '{"EPOCHS": 5}'


def test_storing_a_notebook_that_writes_a_record_names_the_notebooks_that_read_records(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("D2L_RESULTS_DIR", str(tmp_path / "results"))
    writer = make_notebook(tmp_path / "toy.ipynb", RECORDING)
    make_notebook(tmp_path / "reader.ipynb", "from d2l_utils import find_run, load_runs\n"
                  "print(find_run(load_runs(), 'linear')['test_acc'])")
    assert main(["store-outputs", str(writer)]) == 0
    out = capsys.readouterr().out
    assert "records written or replaced: quick/cpu/toy--linear.json" in out
    assert "read records, whose stored outputs may print these: reader.ipynb\n" in out
    assert "store again each one that prints them" in out


def test_storing_a_notebook_that_writes_no_record_prints_no_reminder(good, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("D2L_RESULTS_DIR", str(tmp_path / "results"))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "old.json").write_text("{}")
    assert main(["store-outputs", str(good)]) == 0
    assert "records" not in capsys.readouterr().out


def test_record_readers_look_at_code_not_prose(tmp_path):
    make_notebook(tmp_path / "a_code.ipynb", "runs = load_runs()")
    prose = make_notebook(tmp_path / "b_prose.ipynb", "print(1)")
    nb = nbformat.read(prose, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("The table comes from `load_runs()`."))
    nbformat.write(nb, prose)
    assert record_readers(tmp_path) == [tmp_path / "a_code.ipynb"]


def test_the_reminder_names_changed_new_and_removed_records(tmp_path):
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "a.json").write_text('{"x": 1}')
    (tmp_path / "q" / "b.json").write_text('{"x": 2}')
    before = record_digests(tmp_path)
    assert readers_reminder(before, record_digests(tmp_path), []) is None
    (tmp_path / "q" / "a.json").write_text('{"x": 3}')
    (tmp_path / "q" / "b.json").unlink()
    (tmp_path / "q" / "c.json").write_text('{}')
    note = readers_reminder(before, record_digests(tmp_path), [tmp_path / "r.ipynb"])
    assert note.splitlines()[:2] == ["records written or replaced: q/a.json, q/c.json",
                                     "records removed: q/b.json"]
    assert "r.ipynb" in note
