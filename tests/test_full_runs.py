"""`python -m d2l_utils full-runs`: the full profile of every chapter on a GPU, its records in results/full/.

No GPU is at hand, so the command runs here on the CPU (``--device cpu``) for one chapter
with one epoch; what a run on CUDA adds (mixed precision, channels-last) is tested in
tests/test_recipe.py on the CPU, and has never run on a GPU for this book.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from d2l_utils import load_runs
from d2l_utils import notebooks as d2l_notebooks
from d2l_utils.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
# About how long this module takes on a 2-core machine (chapter 1's two models, one epoch each,
# under the full profile): 115 s on 2026-12-03, with other runs sharing the cores; conftest.py
# starts the longest files first.
RUN_SECONDS = 115


def test_the_command_runs_the_full_profile_and_writes_records_under_full_and_the_device(tmp_path):
    notebook = ROOT / "notebooks" / "01_fashion_mnist_baselines.ipynb"
    before = notebook.read_bytes()
    env = {**__import__("os").environ, "D2L_RESULTS_DIR": str(tmp_path / "results")}
    env.pop("D2L_DEVICE", None)
    done = subprocess.run([sys.executable, "-m", "d2l_utils", "full-runs", str(notebook), "--device", "cpu",
                           "-p", "EPOCHS", "1", "-p", "THREADS", "1", "--output-dir", str(tmp_path / "runs")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 0 failed" in done.stdout
    assert notebook.read_bytes() == before, "a run wrote the committed notebook"
    assert (tmp_path / "runs" / "full-cpu" / "01_fashion_mnist_baselines--epochs-1--threads-1.ipynb").is_file()
    records = load_runs(tmp_path / "results")
    assert sorted(run["model"] for run in records) == ["mlp", "softmax"]
    for run in records:
        assert run["path"].startswith("full/cpu/01_fashion_mnist_baselines--")
        assert (run["profile"], run["device"], len(run["epochs"])) == ("full", "cpu", 1)
        assert run["overrides"] == {"EPOCHS": 1, "THREADS": 1}


def test_by_default_every_chapter_runs_in_reading_order_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(d2l_notebooks, "run_notebooks", lambda paths, **kwargs: calls.append((paths, kwargs)))
    monkeypatch.chdir(ROOT)
    d2l_notebooks.run_full_profile()
    [(paths, kwargs)] = calls
    assert [p.name for p in paths] == sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    names = [p.name for p in paths]
    [comparison] = [n for n in names if n.endswith("_comparison.ipynb")]
    # the comparison compares the records of the network chapters before it, so they run first
    assert all(n < comparison for n in names if not n.endswith(("_comparison.ipynb", "_distributed.ipynb")))
    assert (kwargs["profile"], kwargs["device"]) == ("full", "cuda")


def test_without_a_cuda_gpu_the_command_refuses_and_says_what_to_do(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(ROOT)
    assert main(["full-runs"]) == 2
    error = capsys.readouterr().err
    assert "PyTorch sees none here" in error and "--device cpu" in error
