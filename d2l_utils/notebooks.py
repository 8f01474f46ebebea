"""Executing the chapters' notebooks: refreshing their stored outputs, and runs by profile."""

from __future__ import annotations

import json
import os
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["store_outputs", "record_digests", "record_readers", "readers_reminder", "run_notebooks", "run_full_profile", "chapter_notebooks", "RunOutcome", "parse_value", "check_run_request",
           "calibrate", "bands_from_runs", "Calibration", "NUMERICS_VARIANTS", "SEED_VARIANTS"]


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
    _write_atomically(nb, path)


def record_digests(folder: str | os.PathLike) -> dict[str, str]:
    """The SHA-256 of every run record (``*.json``) below ``folder``, by path relative to it."""
    import hashlib

    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("**/*.json"))}


# What a chapter calls to read committed records into its outputs.
_READS_RECORDS = ("load_runs(", "read_run(", "find_run(")


def record_readers(folder: str | os.PathLike) -> list[Path]:
    """The notebooks in ``folder`` whose code reads run records (``load_runs``, ``read_run``,
    ``find_run``): their stored outputs may print what other runs recorded."""
    readers = []
    for path in sorted(Path(folder).glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        if any(call in code for call in _READS_RECORDS):
            readers.append(path)
    return readers


def readers_reminder(before: dict[str, str], after: dict[str, str], readers: list[Path]) -> str | None:
    """What to do when a run changed committed records, or None when it changed none.

    ``before`` and ``after`` are ``record_digests`` of the results folder around the run.
    """
    changed = sorted(name for name in after if before.get(name) != after[name])
    removed = sorted(set(before) - set(after))
    if not changed and not removed:
        return None
    lines = [f"records written or replaced: {', '.join(changed) or 'none'}"]
    if removed:
        lines.append(f"records removed: {', '.join(removed)}")
    if readers:
        lines.append("notebooks that read records, whose stored outputs may print these: "
                     + ", ".join(p.name for p in readers))
        lines.append("store again each one that prints them (after the notebook that wrote them), "
                     "then run nbval on it")
    return "\n".join(lines)


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


def chapter_notebooks(folder: str | os.PathLike = "notebooks") -> list[Path]:
    """Every chapter's notebook in ``folder``, in reading order (``NN_topic.ipynb``)."""
    found = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no chapter notebooks (NN_topic.ipynb) in {folder}: run this from the "
                                "repository's root")
    return found


def run_full_profile(notebooks: list[str | os.PathLike] | None = None, *, device: str = "cuda",
                     parameters: dict[str, Any] | None = None,
                     output_dir: str | os.PathLike = "_build/runs") -> list[RunOutcome]:
    """Run the ``full`` profile of every chapter (or of ``notebooks``), in reading order, on ``device``.

    Each training run writes its record to ``results/full/<device>/`` (or under
    $D2L_RESULTS_DIR); the comparison chapter, run last, reads them. Asking for CUDA on a
    machine without a CUDA GPU is refused before anything runs.
    """
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the full profile is meant for a CUDA GPU, and PyTorch sees none here. "
                           "Run it on a machine with one (or in Colab with a GPU runtime); to try the "
                           "command elsewhere, pass --device cpu with small settings, for example "
                           "-p EPOCHS 1 (records then go to results/full/cpu/)")
    paths = [Path(p) for p in notebooks] if notebooks else chapter_notebooks()
    return run_notebooks(paths, profile="full", device=device, parameters=parameters, output_dir=output_dir)


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


# --- calibration of the nbval tolerances ---------------------------------------------------------

# Numerics that another reader's machine may have: ATen's vectorised code for another
# instruction set (or none), oneDNN's convolutions limited to AVX2, MKL's portable code
# paths, and a second thread. Each is an environment variable read when PyTorch starts.
# A processor without AVX-512 changes ATen's and oneDNN's code at once: "avx2" is that
# machine, whose numbers are not within the spread of either change alone. "native" sets
# nothing: on the machine that stored the outputs it repeats them, and on another processor
# (a chapter stored elsewhere) it measures what a reader with this processor will see.
NUMERICS_VARIANTS: dict[str, dict[str, str]] = {
    "native": {},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "threads-2": {"D2L_THREADS": "2"},
}
SEED_VARIANTS = (1, 2)
NUMERICS_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "D2L_THREADS")
CALIBRATION_KEY = "d2l_calibration"


@dataclass
class Calibration:
    """How one notebook's calibration ended: bands per code cell, or why there are none."""
    notebook: Path
    bands: dict[int, list] | None = None      # code-cell index -> list of tolerance.Band
    problems: list[str] | None = None
    notes: list[str] | None = None             # seed runs left out of a training cell's bands
    error: str | None = None
    seed_records: list[Path] = field(default_factory=list)  # the seed runs' records (see calibrate)


def _keep_seed_record(record: Path, folder: Path, seed: int) -> Path:
    """Copy a calibration seed run's record to ``results_dir()`` as the runner names a seed variant.

    The seed run printed the stored run's record names (so that its outputs compare
    with the stored ones word for word); its record becomes ``...--seed-N.json`` with
    ``overrides`` ``{"SEED": N}``, what ``run ... -p SEED N`` writes.
    """
    from .results import _write_atomically as write_text_atomically
    from .results import results_dir, variant_name

    data = json.loads(record.read_text())
    if data.get("seed") != seed or data.get("overrides"):
        raise ValueError(f"{record} is not the record of a run with seed {seed} and no other change")
    data["overrides"] = {"SEED": seed}
    target = results_dir() / record.relative_to(folder).parent / f"{record.stem}--{variant_name(data['overrides'])}.json"
    write_text_atomically(target, json.dumps(data, indent=1, allow_nan=False) + "\n")
    return target


def _variant_run(path: Path, output: Path, env: dict[str, str], seed: int | None,
                 timeout: float) -> str | None:
    """Execute ``path`` with papermill in its own process under ``env``; the error, or None."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "papermill", str(path), str(output), "-k", "python3",
               "--cwd", str(path.parent), "--no-progress-bar", "--log-level", "ERROR"]
    if seed is not None:
        command += ["-p", "SEED", str(seed)]
    output.parent.mkdir(parents=True, exist_ok=True)
    # A session of its own, so that a run past its time is stopped with its kernel: killing
    # papermill alone would leave the kernel computing on the cores the other runs need.
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return f"did not finish in {timeout:.0f} s (raise --timeout on a busy machine)"
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        return "; ".join(lines[-3:]) or f"papermill exited with {done.returncode}"
    return None


def _threads_of(env: dict[str, str]) -> int:
    return int(env.get("D2L_THREADS", "1"))


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"
            and "injected-parameters" not in c.metadata.get("tags", [])]


def calibrate(notebooks: list[str | os.PathLike], *, runs_dir: str | os.PathLike = "_build/calibration",
              sanitize_file: str | os.PathLike = "tests/sanitize.cfg", jobs: int = 2,
              timeout: float = 1800, keep_seed_records: bool = False) -> list[Calibration]:
    """Measure nbval tolerances: rerun each notebook under other numerics and seeds, store bands.

    Each notebook runs once per entry of ``NUMERICS_VARIANTS`` and once per
    seed of ``SEED_VARIANTS`` (``jobs`` runs at a time, each in its own
    process, on the CPU, its run records going to a temporary folder). Every
    code cell's outputs are then compared with the stored ones, and each
    number that a numerics variant moved gets a band (see ``d2l_utils.tolerance``)
    in the cell's metadata; the notebook's metadata says how it was measured.
    The stored outputs themselves are never changed. A notebook with a failed
    run, or whose stored outputs change while it is calibrated, is not written.

    The seed runs are runs like ``run ... -p SEED 1``. With ``keep_seed_records`` the
    records of a notebook whose calibration succeeded are copied to ``results_dir()``
    (the project's ``results/`` unless $D2L_RESULTS_DIR says otherwise), named as that
    command names them (``...--seed-1.json``); ``Calibration.seed_records`` lists them
    either way.
    """
    from concurrent.futures import ThreadPoolExecutor

    from . import tolerance

    paths = [Path(p) for p in notebooks]
    for path in paths:
        if not path.is_file() or path.suffix != ".ipynb":
            raise FileNotFoundError(f"{path} is not a notebook file")
    sanitize = tolerance.sanitizer(Path(sanitize_file).read_text())
    variants = [(name, env, None) for name, env in NUMERICS_VARIANTS.items()]
    variants += [(f"seed-{seed}", {}, seed) for seed in SEED_VARIANTS]
    from .results import OVERRIDES_ENV

    records = Path(tempfile.mkdtemp(prefix="d2l-calibration-results-"))
    base_env = {k: v for k, v in os.environ.items() if k not in NUMERICS_ENV}
    base_env.pop(OVERRIDES_ENV, None)
    base_env.update(D2L_DEVICE="cpu")

    def env_of(path: Path, name: str, env: dict[str, str], seed: int | None) -> dict[str, str]:
        """Each run writes its records to a folder of its own (and prints the stored run's names)."""
        return {**base_env, **env, "D2L_RESULTS_DIR": str(records / path.stem / name)}

    before = {path: path.read_bytes() for path in paths}
    tasks = [(path, name, Path(runs_dir) / path.stem / f"{name}.ipynb", env_of(path, name, env, seed), seed)
             for path in paths for name, env, seed in variants]
    # A run on n threads takes n of the job slots: two-thread PyTorch beside other runs
    # on the same cores waits at every parallel region for a thread that is not running.
    errors: dict[int, str | None] = {}
    for width in sorted({_threads_of(t[3]) for t in tasks}):
        chosen = [i for i, t in enumerate(tasks) if _threads_of(t[3]) == width]
        with ThreadPoolExecutor(max_workers=max(1, jobs // width)) as pool:
            for i, error in zip(chosen, pool.map(
                    lambda i: _variant_run(tasks[i][0], tasks[i][2], tasks[i][3], tasks[i][4], timeout),
                    chosen)):
                errors[i] = error
    errors = [errors[i] for i in range(len(tasks))]

    outcomes = []
    for path in paths:
        failed = [f"{name}: {err}" for (p, name, *_), err in zip(tasks, errors) if p == path and err]
        if failed:
            outcomes.append(Calibration(path, error="; ".join(failed)))
        elif path.read_bytes() != before[path]:
            outcomes.append(Calibration(path, error="the notebook changed while it was calibrated; "
                                                    "calibrate it again"))
        else:
            outcome = bands_from_runs(path, {name: out for p, name, out, _, _ in tasks if p == path}, sanitize)
            for seed in SEED_VARIANTS:
                folder = records / path.stem / f"seed-{seed}"
                for record in sorted(folder.rglob("*.json")):
                    kept = record
                    if keep_seed_records and outcome.error is None:
                        kept = _keep_seed_record(record, folder, seed)
                    outcome.seed_records.append(kept)
            outcomes.append(outcome)
    return outcomes


def bands_from_runs(path: Path, runs: dict[str, Path], sanitize) -> Calibration:
    """Derive the bands of ``path`` from its executed variants (name -> notebook) and store them."""
    import datetime

    import nbformat
    import torch

    from . import tolerance
    from .profile import cpu_model

    outcome = Calibration(path)
    stored = nbformat.read(path, as_version=4)
    cells = _code_cells(stored)
    runs = {name: _code_cells(nbformat.read(out, as_version=4)) for name, out in runs.items()}
    mismatch = [name for name, run in runs.items() if [c.source for c in run] != [c.source for c in cells]]
    if mismatch:
        outcome.error = f"the runs {', '.join(mismatch)} hold other code than the notebook"
        return outcome
    outcome.bands, outcome.problems, outcome.notes = {}, [], []
    for i, cell in enumerate(cells):
        cell.metadata.pop(tolerance.METADATA_KEY, None)
        if "tags" in cell.metadata:
            cell.metadata["tags"] = [t for t in cell.metadata["tags"] if t != "nbval-approx"]
        if cell.execution_count is None or not cell.outputs:
            continue
        found = tolerance.cell_bands(
            cell.outputs,
            {name: run[i].outputs for name, run in runs.items() if name in NUMERICS_VARIANTS},
            {name: run[i].outputs for name, run in runs.items() if name not in NUMERICS_VARIANTS},
            sanitize)
        outcome.problems += [f"code cell {i}: {p}" for p in found.problems]
        _check_bands_accept_the_runs(cell, i, runs, found, sanitize)
        if found.bands:
            outcome.notes += [f"code cell {i}: {p} (left out of its bands)" for p in found.seeds_left_out]
            outcome.bands[i] = found.bands
            cell.metadata[tolerance.METADATA_KEY] = {
                "numbers": found.numbers, "runs": len(runs) + 1,
                "bands": [b.as_metadata() for b in found.bands]}
    stored.metadata[CALIBRATION_KEY] = {
        "date": datetime.date.today().isoformat(),
        "machine": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "rule": (f"a number that a numerics variant moves is accepted within max({tolerance.SIGMAS} "
                 "x its standard deviation over all runs, its largest deviation from the stored "
                 "value, one unit of its last digit); seeds widen only such numbers; every other "
                 "number and every word must match exactly"),
        "stored_run": "make outputs (quick profile, CPU, default numerics)",
        "variants": {**{name: {"env": env} for name, env in NUMERICS_VARIANTS.items()},
                     **{f"seed-{s}": {"parameters": {"SEED": s}} for s in SEED_VARIANTS}},
    }
    _write_atomically(stored, path)
    return outcome


def _check_bands_accept_the_runs(cell, i: int, runs: dict, found, sanitize) -> None:
    """Every numerics run must pass the comparison with the bands just derived (by construction)."""
    from . import tolerance

    for name, run in runs.items():
        if name not in NUMERICS_VARIANTS or any(p.startswith(f"{name}:") for p in found.problems):
            continue
        test, ref = tolerance.align_outputs(run[i].outputs, cell.outputs, found.bands, sanitize)
        if tolerance.fields(test, str) != tolerance.fields(ref, str):
            raise AssertionError(f"code cell {i}: the bands derived do not accept the {name} run")


def _write_atomically(nb, path: Path) -> None:
    import nbformat

    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".ipynb.tmp")
    os.close(fd)
    try:
        nbformat.write(nb, tmp)
        os.chmod(tmp, path.stat().st_mode & 0o777)  # mkstemp makes it private; keep the file's mode
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
