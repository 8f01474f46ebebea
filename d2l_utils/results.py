"""Run records: one JSON file per training run under ``results/``.

A record says what was trained, on what, with which settings and code, and
what every epoch measured, so that any number in the book can be traced to
the run that produced it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .profile import Profile, device_name
from .summary import count_macs, count_parameters, network_depth
from .train import History

__all__ = ["results_dir", "project_results_dir", "code_version", "record_run", "load_runs", "run_overrides",
           "variant_name", "find_run", "read_run", "runs_table", "runs_frame", "RECIPE_SIZES"]

# Set by ``python -m d2l_utils run`` for the notebooks it executes: the
# parameters given with -p, as JSON. A run with overrides is a variant of the
# chapter's run and gets its own record instead of replacing the chapter's.
OVERRIDES_ENV = "D2L_RUN_OVERRIDES"


def _project_root(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / "_toc.yml").is_file() and (folder / "d2l_utils").is_dir():
            return folder
    return None


def project_results_dir() -> Path:
    """``results/`` at the project's root (the committed records), else ``./results``.

    Unlike ``results_dir`` this ignores $D2L_RESULTS_DIR: it is where the
    book's records are, whatever folder new runs write to.
    """
    root = _project_root(Path.cwd()) or _project_root(Path(__file__).resolve().parent)
    return (root or Path.cwd()) / "results"


def results_dir() -> Path:
    """$D2L_RESULTS_DIR, else ``results/`` at the project's root, else ``./results``."""
    if os.environ.get("D2L_RESULTS_DIR"):
        return Path(os.environ["D2L_RESULTS_DIR"]).expanduser()
    return project_results_dir()


def code_version() -> str:
    """The git commit of the project (with ``-dirty`` for uncommitted changes), if known."""
    root = _project_root(Path(__file__).resolve().parent)
    if root is None:
        from . import __version__
        return __version__
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        from . import __version__
        return __version__


def run_overrides() -> dict[str, Any]:
    """The parameters this run was given on the runner's command line (empty if none)."""
    text = os.environ.get(OVERRIDES_ENV, "")
    if not text:
        return {}
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{OVERRIDES_ENV} must hold a JSON object of parameters; got {text!r}") from err
    if not isinstance(overrides, dict):
        raise ValueError(f"{OVERRIDES_ENV} must hold a JSON object of parameters; got {text!r}")
    return overrides


def variant_name(overrides: dict[str, Any]) -> str:
    """A file-name part for a set of overrides: ``{"BATCH_SIZE": 64}`` -> ``batch_size-64``."""
    def clean(text: str) -> str:
        return "".join(c if c.isalnum() or c in ".-" else "_" for c in text)
    return "--".join(f"{clean(k.lower())}-{clean(str(v))}" for k, v in sorted(overrides.items()))


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a record is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def record_run(history: History, *, chapter: str, model: str, net: nn.Module, profile: Profile,
               hparams: dict[str, Any], directory: str | os.PathLike | None = None,
               sizes: dict[str, int] | None = None, world=None, fit_seconds: float | None = None) -> Path:
    """Write ``<results>/<profile>/<device>/<chapter>--<model>.json`` and return its path.

    ``hparams`` holds the settings that shaped the run (epochs, batch size,
    learning rate, resize, subset sizes, ...); they must be JSON values.
    A run that the runner started with parameter overrides is a variant: its
    file name ends in them (``...--lenet--batch_size-64.json``) and the record
    lists them under ``overrides``.

    ``parameters`` counts the trainable scalars (those the optimiser updates) and
    ``parameters_total`` every scalar, frozen ones included: a network whose
    normalisation layers have a frozen scale and shift has fewer of the first.

    ``sizes`` gives the training, validation and test set sizes (``Splits.sizes``);
    a run validated every epoch also records its test accuracy, scored once after
    training, and the predicted class of every test image as one string of
    digits (``test_predictions``), so that two models can be compared image by image.

    ``world`` (a ``d2l_utils.distributed.World``) marks a data-parallel run: the record
    then gives its number of processes (``world_size``) and their ``backend``.

    ``fit_seconds``, when given, is the wall time of the whole run as the notebook timed it:
    ``wall_time`` sums the epochs' training time only, this one also counts the evaluations
    (and, for a compiled network, the compilation).
    """
    if not history.epochs:
        raise ValueError("the history is empty: train before recording the run")
    epochs = history.to_dict()["epochs"]
    shape = history.input_shape
    overrides = run_overrides()
    record = {
        "chapter": chapter,
        "model": model,
        "parameters": count_parameters(net),
        "parameters_total": count_parameters(net, trainable_only=False),
        "input_shape": list(shape) if shape else None,
        "macs": count_macs(net, shape) if shape else None,
        "depth": network_depth(net, shape) if shape else None,
        "profile": profile.name,
        "device": profile.device.type,
        "device_name": device_name(profile.device),
        "seed": profile.seed,
        "threads": profile.threads,
        "overrides": overrides,
        "torch": torch.__version__,
        "code_version": code_version(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hparams": hparams,
        "epochs": epochs,
        "final": epochs[-1],
        "wall_time": history.wall_time,
    }
    if fit_seconds is not None:
        if not isinstance(fit_seconds, (int, float)) or fit_seconds < history.wall_time:
            raise ValueError(f"fit_seconds must be a number of seconds at least the training time "
                             f"({history.wall_time:.1f} s); got {fit_seconds!r}")
        record["fit_seconds"] = round(float(fit_seconds), 1)
    if world is not None:
        record["world_size"], record["backend"] = world.world_size, world.backend
    if history.precision is not None:  # a mixed-precision run says so; float32 runs keep the old form
        record["precision"] = history.precision
    if sizes is not None:
        record["sizes"] = dict(sizes)
    if history.test_acc is not None:
        record["test_acc"] = history.test_acc
    if history.predictions is not None:
        if int(history.predictions.max()) > 9:
            raise ValueError("test_predictions are stored one digit a class: at most 10 classes")
        record["test_predictions"] = "".join(map(str, history.predictions.tolist()))
    try:
        text = json.dumps(record, indent=1, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise TypeError(f"hparams must hold plain JSON values (numbers, strings, lists): {err}") from err
    base = Path(directory) if directory is not None else results_dir()
    stem = f"{chapter}--{model}" + (f"--{variant_name(overrides)}" if overrides else "")
    path = base / profile.name / profile.device.type / f"{stem}.json"
    _write_atomically(path, text)
    return path


def load_runs(directory: str | os.PathLike | None = None) -> list[dict]:
    """Every run record below ``directory`` (default: the results folder), sorted by path.

    Each has a ``test_acc``: the test accuracy scored once when training ended, or, for a
    run that was tested after every epoch, the last epoch's; and a ``parameters_total``, which
    is None in records written before the total was recorded (their ``parameters`` counts the
    trainable scalars only).
    """
    base = Path(directory) if directory is not None else results_dir()
    return [read_run(p) | {"path": str(p.relative_to(base))} for p in sorted(base.glob("**/*.json"))]


def read_run(path: str | os.PathLike) -> dict:
    """One record, as ``load_runs`` gives it (``path`` is the file's own path here)."""
    run = json.loads(Path(path).read_text()) | {"path": str(path)}
    run.setdefault("parameters_total", None)  # unknown in the older records
    if run.get("test_acc") is None:
        run["test_acc"] = run["final"].get("test_acc")
    return run


def find_run(runs: list[dict], model: str, overrides: dict[str, Any] | None = None) -> dict:
    """The record of ``model`` made with exactly these runner overrides (none: the chapter's own run).

    A missing record is an error that says how to make it.
    """
    overrides = overrides or {}
    for run in runs:
        if run["model"] == model and run["overrides"] == overrides:
            return run
    command = ["python -m d2l_utils run notebooks/<chapter>.ipynb --profile quick --device cpu"]
    command += [f"-p {name} {value}" for name, value in overrides.items()]
    known = sorted({run["model"] for run in runs})
    raise LookupError(f"no record of {model!r} with overrides {overrides} among {len(runs)} records "
                      f"(models: {', '.join(known) or 'none'}); make it with `{' '.join(command)}`")


def runs_table(rows: dict[str, dict]) -> str:
    """Records side by side, one row each: parameters, epochs, final train and validation
    accuracy, and the test accuracy scored once at the end. ``rows`` maps a label to a record
    (from ``load_runs``, ``find_run`` or ``read_run``)."""
    width = max(len("run"), *map(len, rows)) + 1
    lines = [f"{'run':<{width}} {'parameters':>10} {'epochs':>6} {'train acc':>9} {'val acc':>7} {'test acc':>8}"]
    for label, run in rows.items():
        final = run["final"]
        val = f"{final['val_acc']:>7.3f}" if final.get("val_acc") is not None else f"{'-':>7}"
        lines.append(f"{label:<{width}} {run['parameters']:>10,} {len(run['epochs']):>6} "
                     f"{final['train_acc']:>9.3f} {val} {run['test_acc']:>8.3f}")
    return "\n".join(lines)


# The data of a run under the shared recipe of chapter 6: all 60,000 training images but the
# 5,000 held out for validation, and all 10,000 test images.
RECIPE_SIZES = {"train": 55_000, "val": 5_000, "test": 10_000}


def runs_frame(runs: list[dict]):
    """Records as a pandas ``DataFrame``, one row each, in the order given.

    Columns: ``name`` (chapter number and model), ``chapter``, ``model``, ``variant``
    (the runner's overrides as in the file name, "" for a chapter's own run),
    ``overrides``, ``seed``, ``epochs``, the data sizes ``train_size``, ``val_size`` and
    ``test_size`` (missing in records written before the sizes were kept), ``parameters``
    (trainable), ``parameters_total`` (frozen ones too; missing in older records), ``macs``
    (per image), ``depth``, ``input``, ``optimizer``, ``schedule``, ``batch_size``, ``lr``,
    the final ``train_loss``, ``train_acc`` and ``val_acc``, ``test_acc``, ``wall_time``
    (seconds of training), ``examples_per_sec`` (training images of all epochs over the
    wall time; missing without sizes), ``profile``, ``device``, ``device_name``,
    ``threads``, ``torch``, ``date``, ``recipe`` (trained under the shared recipe on
    ``RECIPE_SIZES`` with its test predictions kept), ``test_predictions`` and ``path``.
    """
    import pandas as pd

    rows = []
    for run in runs:
        hparams, sizes, final = run.get("hparams", {}), run.get("sizes") or {}, run["final"]
        epochs = len(run["epochs"])
        shape = run.get("input_shape")
        rows.append({
            "name": f"{run['chapter'][:2]} {run['model']}",
            "chapter": run["chapter"], "model": run["model"],
            "variant": variant_name(run.get("overrides") or {}), "overrides": run.get("overrides") or {},
            "seed": run.get("seed"), "epochs": epochs,
            "train_size": sizes.get("train"), "val_size": sizes.get("val"), "test_size": sizes.get("test"),
            "parameters": run["parameters"], "parameters_total": run.get("parameters_total"),
            "macs": run.get("macs"), "depth": run.get("depth"),
            "input": "x".join(map(str, shape)) if shape else None,
            "optimizer": hparams.get("optimizer"), "schedule": hparams.get("schedule"),
            "batch_size": hparams.get("batch_size"), "lr": hparams.get("lr"),
            "train_loss": final.get("train_loss"), "train_acc": final.get("train_acc"),
            "val_acc": final.get("val_acc"), "test_acc": run.get("test_acc", final.get("test_acc")),
            "wall_time": run["wall_time"],
            "examples_per_sec": sizes["train"] * epochs / run["wall_time"] if sizes.get("train") else None,
            "profile": run.get("profile"), "device": run.get("device"), "device_name": run.get("device_name"),
            "threads": run.get("threads"), "torch": run.get("torch"), "date": run.get("date"),
            "recipe": bool(hparams.get("schedule")) and sizes == RECIPE_SIZES and "test_predictions" in run,
            "test_predictions": run.get("test_predictions"), "path": run.get("path"),
        })
    frame = pd.DataFrame(rows, columns=None if rows else _FRAME_COLUMNS)
    for column in ("seed", "epochs", "train_size", "val_size", "test_size", "parameters",
                   "parameters_total", "macs", "depth", "batch_size", "threads"):
        frame[column] = frame[column].astype("Int64")  # whole numbers, missing where unknown
    for column in ("lr", "train_loss", "train_acc", "val_acc", "test_acc", "wall_time", "examples_per_sec"):
        frame[column] = frame[column].astype("Float64")
    return frame


_FRAME_COLUMNS = ["name", "chapter", "model", "variant", "overrides", "seed", "epochs", "train_size",
                  "val_size", "test_size", "parameters", "parameters_total", "macs", "depth", "input",
                  "optimizer", "schedule", "batch_size", "lr", "train_loss", "train_acc", "val_acc",
                  "test_acc", "wall_time", "examples_per_sec", "profile", "device", "device_name",
                  "threads", "torch", "date", "recipe", "test_predictions", "path"]
