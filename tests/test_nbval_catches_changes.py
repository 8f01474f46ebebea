"""The notebook regression must notice when a chapter's substance changes.

Each test copies a chapter, changes one thing a reader would care about (a
kernel size, a padding, the scaling of the data, the learning rate, the
epochs, a block, a dropout probability), runs ``pytest --nbval -x`` on the
copy, and expects it to fail at the cell whose stored output no longer holds,
after the cells before it passed. ``-x`` stops at that first failure. A
change that only training can show must fail at the training cell: its
numbers leave the bands that the calibration measured (d2l_utils/tolerance.py),
so these tests are what shows that the bands are narrow enough to mean something.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
# About how long this module takes on one thread of a 2-core machine (each case runs a chapter up to the cell that must fail),
# measured on 2026-12-03; conftest.py starts the longest files first.
RUN_SECONDS = 850
NOTEBOOKS = ROOT / "notebooks"


def run_nbval(notebook: Path) -> subprocess.CompletedProcess:
    shutil.copy(ROOT / "conftest.py", notebook.parent / "conftest.py")
    env = dict(os.environ, D2L_DEVICE="cpu", D2L_RESULTS_DIR=str(notebook.parent / "results"))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "-x", "-q", "-p", "no:cacheprovider",
         "--nbval-current-env", f"--nbval-sanitize-with={ROOT / 'tests' / 'sanitize.cfg'}",
         "--rootdir", str(notebook.parent), str(notebook)],
        cwd=notebook.parent, env=env, capture_output=True, text=True, timeout=900)


def mutated_copy(tmp_path: Path, name: str, old: str, new: str) -> tuple[Path, int]:
    """Copy of a chapter with ``old`` replaced by ``new`` in exactly one code cell."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    hits = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and old in c.source]
    assert len(hits) == 1, f"{old!r} should stand in exactly one code cell of {name}, found {hits}"
    nb.cells[hits[0]].source = nb.cells[hits[0]].source.replace(old, new)
    path = tmp_path / name
    nbformat.write(nb, path)
    return path, hits[0]


def failed_cell(result: subprocess.CompletedProcess) -> int:
    """Index of the notebook cell nbval reported as failing."""
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    found = re.findall(r"::Cell (\d+)", result.stdout)
    assert found, result.stdout[-3000:]
    return int(found[-1])


def code_cell_index(name: str, cell: int) -> int:
    """nbval numbers code cells only; map a cell index of the notebook to that number."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    return sum(1 for c in nb.cells[:cell] if c.cell_type == "code")


@pytest.mark.parametrize("old, new", [
    ("nn.Conv2d(1, 6, kernel_size=5, padding=2)", "nn.Conv2d(1, 6, kernel_size=3, padding=1)"),
    ("nn.Conv2d(1, 6, kernel_size=5, padding=2)", "nn.Conv2d(1, 6, kernel_size=5, padding=1)"),
])
def test_changing_a_lenet_layer_fails_at_its_shape_table(tmp_path, old, new):
    path, edited = mutated_copy(tmp_path, "06_lenet.ipynb", old, new)
    summary = code_cell_index("06_lenet.ipynb", edited) + 1  # the cell that prints the shapes
    assert failed_cell(run_nbval(path)) == summary


def first_code_cell_with(name: str, text: str) -> int:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    return next(i for i, c in enumerate(c for c in nb.cells if c.cell_type == "code") if text in c.source)


STANDARDISE = ("\nimport d2l_utils.data as _data\n"
               "_scale = _data.Batches._transform\n"
               "_data.Batches._transform = lambda self, images: (_scale(self, images) - 0.2860) / 0.3530")

LENET = "06_lenet.ipynb"
LENET_TRAINING = "history = train_classifier(net, train_iter, test_iter, epochs=epochs,"
LENET_DATA = ("train_iter, test_iter = load_fashion_mnist(batch_size, device=profile.device, seed=SEED,\n"
              "                                           train_size=TRAIN_SIZE, test_size=TEST_SIZE)")


def test_ten_times_the_learning_rate_fails_at_the_lenets_training_log(tmp_path):
    """The LeNet's log moves under other numerics and seeds, so its numbers have bands: this
    shows that the bands are narrower than what a changed learning rate does. (The chapter's
    first training, so that the case stops early.)"""
    path, _ = mutated_copy(tmp_path, LENET, "Adam(net.parameters(), lr=lr)", "Adam(net.parameters(), lr=10 * lr)")
    assert failed_cell(run_nbval(path)) == first_code_cell_with(LENET, LENET_TRAINING)


@pytest.mark.parametrize("old, new", [
    pytest.param(LENET_TRAINING, LENET_TRAINING.replace("epochs=epochs", "epochs=epochs // 2"),
                 id="epochs-halved"),
    pytest.param(LENET_DATA, LENET_DATA + STANDARDISE, id="inputs-standardised"),
])
def test_a_change_to_the_sigmoid_lenets_training_fails_at_its_training_log(tmp_path, old, new):
    path, _ = mutated_copy(tmp_path, LENET, old, new)
    assert failed_cell(run_nbval(path)) == first_code_cell_with(LENET, LENET_TRAINING)


VGG = "08_vgg.ipynb"


def test_removing_a_vgg_block_fails_at_the_shape_table(tmp_path):
    arch = "conv_arch = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))"
    path, edited = mutated_copy(tmp_path, VGG, arch, arch.replace(", (2, 512))", ")"))
    assert failed_cell(run_nbval(path)) == first_code_cell_with(VGG, "rows = layer_summary(net,")


def test_a_lower_dropout_probability_fails_at_vggs_training_log(tmp_path):
    path, _ = mutated_copy(tmp_path, VGG, "nn.Dropout(p=0.5)", "nn.Dropout(p=0.1)")
    assert failed_cell(run_nbval(path)) == first_code_cell_with(VGG, "history = fit(")


def test_rescaling_the_data_fails_at_the_pixel_statistics(tmp_path):
    """Standardising the pixels instead of the stored run's [0, 1] scaling changes the
    training set's pixel mean and std that chapter 1 prints, an exact comparison."""
    name = "01_fashion_mnist_baselines.ipynb"
    old = "data = read_fashion_mnist()"
    new = old + STANDARDISE
    path, edited = mutated_copy(tmp_path, name, old, new)
    statistics = code_cell_index(name, edited) + 1  # the cell that prints class counts and pixel statistics
    assert failed_cell(run_nbval(path)) == statistics
