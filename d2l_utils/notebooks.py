"""Executing the chapters' notebooks: refreshing their stored outputs, and runs by profile."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["store_outputs", "run_notebooks", "RunOutcome", "parse_value", "check_run_request"]


def store_outputs(path: str | os.PathLike, timeout: int | None = None) -> None:
    """Run a notebook top to bottom in a fresh kernel on the CPU and save its outputs in place.

    These are the outputs the book shows and ``pytest --nbval`` checks: the
    default (quick) profile on a CPU. The file is replaced only when every
    cell ran, so a failure leaves the committed notebook as it was.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    # ``timeout`` is per cell; None waits as long as a cell needs (a busy machine is slow).
    from .results import OVERRIDES_ENV

    # The chapter's own run: on the CPU, with no runner overrides.
    saved = {name: os.environ.pop(name, None) for name in ("D2L_DEVICE", OVERRIDES_ENV)}
    os.environ["D2L_DEVICE"] = "cpu"
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".ipynb.tmp")
    os.close(fd)
    try:
        nbformat.write(nb, tmp)
        os.chmod(tmp, path.stat().st_mode & 0o777)  # mkstemp makes it private; keep the file's mode
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@dataclass
class RunOutcome:
    """How one notebook's run ended: ``error`` is None on success."""
    notebook: Path
    output: Path
    error: str | None = None


def parse_value(text: str) -> Any:
    """A command-line parameter value: int, float, None, True/False, else the string itself."""
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def check_run_request(notebooks: list[Path], profile: str, device: str,
                      parameters: dict[str, Any]) -> None:
    """Refuse, before anything runs, an unknown profile, device, notebook or parameter name."""
    from papermill import inspect_notebook

    from .profile import DEVICES, PROFILES

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    for reserved in ("PROFILE", "DEVICE"):
        if reserved in parameters:
            raise ValueError(f"set {reserved} with --{reserved.lower()}, not as a parameter")
    for path in notebooks:
        if not path.is_file() or path.suffix != ".ipynb":
            raise FileNotFoundError(f"{path} is not a notebook file")
        known = inspect_notebook(str(path))
        unknown = sorted(set(parameters) - set(known))
        if unknown:
            raise ValueError(f"{path.name} has no parameter {', '.join(unknown)}; "
                             f"its parameters are {', '.join(known)}")


def run_notebooks(notebooks: list[str | os.PathLike], *, profile: str, device: str = "auto",
                  parameters: dict[str, Any] | None = None,
                  output_dir: str | os.PathLike = "_build/runs") -> list[RunOutcome]:
    """Execute notebooks with papermill under a profile, each into ``output_dir``.

    The committed notebooks are never written. A failing notebook is reported
    with its cell and error and the others still run.
    """
    from .results import OVERRIDES_ENV, variant_name

    paths = [Path(p) for p in notebooks]
    parameters = dict(parameters or {})
    check_run_request(paths, profile, device, parameters)
    target = Path(output_dir) / f"{profile}-{device}"
    suffix = f"--{variant_name(parameters)}" if parameters else ""
    outcomes = []
    previous = os.environ.get(OVERRIDES_ENV)
    os.environ[OVERRIDES_ENV] = json.dumps(parameters)  # the kernels inherit it: see record_run
    try:
        for path in paths:
            outcomes.append(_run_one(path, target / f"{path.stem}{suffix}.ipynb", profile, device,
                                     parameters))
    finally:
        if previous is None:
            os.environ.pop(OVERRIDES_ENV)
        else:
            os.environ[OVERRIDES_ENV] = previous
    return outcomes


def _run_one(path: Path, output: Path, profile: str, device: str,
             parameters: dict[str, Any]) -> RunOutcome:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    if output.resolve() == path.resolve():
        raise ValueError(f"refusing to overwrite {path}: choose another output folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    outcome = RunOutcome(path, output)
    try:
        papermill.execute_notebook(str(path), str(output), cwd=str(path.parent),
                                   kernel_name="python3", progress_bar=False,
                                   parameters={"PROFILE": profile, "DEVICE": device, **parameters})
    except PapermillExecutionError as err:
        outcome.error = f"cell {err.cell_index}: {err.ename}: {err.evalue}"
    except Exception as err:  # a kernel that died, a missing package: still report and go on
        outcome.error = f"{type(err).__name__}: {err}"
    return outcome
