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
from .summary import count_parameters
from .train import History

__all__ = ["results_dir", "code_version", "record_run", "load_runs"]


def _project_root(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / "_toc.yml").is_file() and (folder / "d2l_utils").is_dir():
            return folder
    return None


def results_dir() -> Path:
    """$D2L_RESULTS_DIR, else ``results/`` at the project's root, else ``./results``."""
    if os.environ.get("D2L_RESULTS_DIR"):
        return Path(os.environ["D2L_RESULTS_DIR"]).expanduser()
    root = _project_root(Path.cwd()) or _project_root(Path(__file__).resolve().parent)
    return (root or Path.cwd()) / "results"


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
               hparams: dict[str, Any], directory: str | os.PathLike | None = None) -> Path:
    """Write ``<results>/<profile>/<device>/<chapter>--<model>.json`` and return its path.

    ``hparams`` holds the settings that shaped the run (epochs, batch size,
    learning rate, resize, subset sizes, ...); they must be JSON values.
    """
    if not history.epochs:
        raise ValueError("the history is empty: train before recording the run")
    epochs = history.to_dict()["epochs"]
    record = {
        "chapter": chapter,
        "model": model,
        "parameters": count_parameters(net),
        "profile": profile.name,
        "device": profile.device.type,
        "device_name": device_name(profile.device),
        "seed": profile.seed,
        "torch": torch.__version__,
        "code_version": code_version(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hparams": hparams,
        "epochs": epochs,
        "final": epochs[-1],
        "wall_time": history.wall_time,
    }
    try:
        text = json.dumps(record, indent=1, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise TypeError(f"hparams must hold plain JSON values (numbers, strings, lists): {err}") from err
    base = Path(directory) if directory is not None else results_dir()
    path = base / profile.name / profile.device.type / f"{chapter}--{model}.json"
    _write_atomically(path, text)
    return path


def load_runs(directory: str | os.PathLike | None = None) -> list[dict]:
    """Every run record below ``directory`` (default: the results folder), sorted by path."""
    base = Path(directory) if directory is not None else results_dir()
    return [json.loads(p.read_text()) | {"path": str(p.relative_to(base))}
            for p in sorted(base.glob("**/*.json"))]
