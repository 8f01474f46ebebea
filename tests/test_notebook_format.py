"""Every chapter notebook opens the same way: a Colab-only install cell, one parameters cell, a GPU runtime."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PARAMETERS = {"PROFILE", "DEVICE", "THREADS"}

# Runs a cell's source as Jupyter would (IPython's `!` and `%` lines included),
# with every way of starting a program replaced by a recorder. The calls made
# are written as JSON to the file named by argv[1]. argv[2] == "colab" puts a
# stand-in google.colab module in sys.modules.
HARNESS = r'''
import json, os, subprocess, sys, types
from IPython.core.inputtransformer2 import TransformerManager

calls = []

def record(*args, **kwargs):
    calls.append([str(a) for a in args])
    return subprocess.CompletedProcess(args, 0, "", "")

class Shell:
    def system(self, command): calls.append(["!", command])
    def getoutput(self, command): calls.append(["!", command]); return ""
    def run_line_magic(self, name, line): calls.append(["%" + name, line])
    def run_cell_magic(self, name, line, cell): calls.append(["%%" + name, line])

for name in ("run", "call", "check_call", "check_output", "Popen", "getoutput", "getstatusoutput"):
    setattr(subprocess, name, record)
os.system = record
sys.modules.pop("google.colab", None)
if sys.argv[2] == "colab":
    sys.modules["google"] = types.ModuleType("google")
    sys.modules["google.colab"] = types.ModuleType("google.colab")
try:
    source = TransformerManager().transform_cell(sys.stdin.read())
    exec(compile(source, "<first cell>", "exec"), {"__name__": "__main__", "get_ipython": lambda: Shell()})
finally:
    with open(sys.argv[1], "w") as log:
        json.dump(calls, log)
'''


def tags(cell) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def assigned_names(source: str) -> list[str]:
    """The names a cell assigns at its top level, in order: what papermill takes as parameters."""
    return [target.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)]


@pytest.fixture(params=NOTEBOOKS, ids=lambda path: path.stem)
def notebook(request) -> nbformat.NotebookNode:
    return nbformat.read(request.param, as_version=4)


def run_first_cell(notebook: nbformat.NotebookNode, tmp_path: Path, *, in_colab: bool):
    """The first cell run in a fresh interpreter: (the process, the programs it tried to start)."""
    log = tmp_path / "calls.json"
    process = subprocess.run([sys.executable, "-c", HARNESS, str(log), "colab" if in_colab else "local"],
                             input=notebook.cells[0].source, capture_output=True, text=True, timeout=60)
    calls = json.loads(log.read_text()) if log.exists() else None
    return process, calls


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebook in notebooks/"


def test_first_cell_is_the_colab_install_cell_hidden_from_the_book(notebook):
    first = notebook.cells[0]
    assert first.cell_type == "code", "the first cell is not a code cell"
    assert {"colab-install", "remove-cell"} <= tags(first), f"first cell is tagged {sorted(tags(first))}"
    assert '"google.colab" in sys.modules' in first.source, "the first cell does not check for Colab"


def test_colab_install_cell_prints_and_runs_nothing_outside_colab(notebook, tmp_path):
    process, calls = run_first_cell(notebook, tmp_path, in_colab=False)
    assert process.returncode == 0, f"the first cell fails outside Colab:\n{process.stderr}"
    assert calls == [], f"the first cell starts programs outside Colab: {calls}"
    assert process.stdout == "" and process.stderr == "", \
        f"the first cell prints outside Colab: {process.stdout!r} {process.stderr!r}"


def test_colab_install_cell_installs_the_course_package_in_colab(notebook, tmp_path):
    process, calls = run_first_cell(notebook, tmp_path, in_colab=True)
    assert process.returncode == 0, f"the first cell fails in Colab:\n{process.stderr}"
    assert any("pip" in " ".join(call) and "install" in " ".join(call) for call in calls), \
        f"in Colab the first cell does not pip install anything: {calls}"


def test_exactly_one_parameters_cell_sets_profile_device_and_threads(notebook):
    cells = [cell for cell in notebook.cells if "parameters" in tags(cell)]
    assert len(cells) == 1, f"{len(cells)} cells are tagged parameters"
    assert cells[0].cell_type == "code", "the parameters cell is not a code cell"
    assigned = set(assigned_names(cells[0].source))
    assert PARAMETERS <= assigned, f"the parameters cell does not set {sorted(PARAMETERS - assigned)}"


def test_notebook_asks_for_a_gpu_runtime(notebook):
    assert notebook.metadata.get("accelerator") == "GPU", \
        f"notebook metadata accelerator is {notebook.metadata.get('accelerator')!r}, not 'GPU'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_papermill_sees_every_name_the_parameters_cell_sets(path):
    """The runner accepts `-p NAME` only for names papermill can read from the parameters cell."""
    from papermill import inspect_notebook

    [cell] = [cell for cell in nbformat.read(path, as_version=4).cells if "parameters" in tags(cell)]
    assigned = assigned_names(cell.source)
    seen = list(inspect_notebook(str(path)))
    assert seen == assigned, f"papermill reads {seen} from a cell that sets {assigned}"


# --- the nbval tolerances ------------------------------------------------------------------------

@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_tolerances_were_measured_around_the_stored_outputs(path):
    """``make outputs`` without ``make calibrate`` afterwards leaves bands around old numbers."""
    from d2l_utils.notebooks import CALIBRATION_KEY
    from d2l_utils.tolerance import METADATA_KEY, Band, align_outputs, sanitizer

    sanitize = sanitizer((ROOT / "tests" / "sanitize.cfg").read_text())

    nb = nbformat.read(path, as_version=4)
    assert CALIBRATION_KEY in nb.metadata, f"run `make calibrate NOTEBOOKS={path.relative_to(ROOT)}`"
    assert {"date", "machine", "variants", "rule"} <= set(nb.metadata[CALIBRATION_KEY])
    for cell in nb.cells:
        assert "nbval-approx" not in tags(cell), "the tolerances now come from the calibration"
        if METADATA_KEY in cell.metadata:
            bands = [Band.from_metadata(b) for b in cell.metadata[METADATA_KEY]["bands"]]
            assert bands and all(b.tolerance >= b.max_deviation for b in bands)
            align_outputs(cell.outputs, cell.outputs, bands, sanitize)  # raises when stale
