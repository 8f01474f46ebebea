"""bench/time_to_accuracy.py: a smoke run prints both times and their ratio; bad settings are refused.

Only what the script prints is checked, never how fast anything was: the tests run on
machines busy with other work, and the measurement itself is made by hand.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from d2l_utils import count_parameters

# About how long this module takes on a 2-core machine shared with other work (the smoke
# run's ResNet-18 step and its imports, mostly), measured on 2026-12-04; conftest.py starts
# the longest files first.
RUN_SECONDS = 40

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

REACHED = r"\d+\.\d s to \d\.\d{4} test accuracy \(epoch \d+\.\d\d\)"
NOT_REACHED = (r"not reached in \d+\.\d s \(stopped at .+, epoch \d+\.\d\d; "
               r"(best test accuracy \d\.\d{4}|no evaluation)\)")


@pytest.fixture(scope="module")
def bench():
    """The script as a module (it imports data_loading from beside it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCH))
        yield importlib.import_module("time_to_accuracy")


def test_a_smoke_run_prints_both_times_and_their_ratio():
    # One batch of 128 images is an epoch: one step of each recipe, then one evaluation on 128
    # test images, which any network beats at a target of 0.01. The caps are only a safeguard.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(BENCH / "time_to_accuracy.py"), "--train-size", "128",
                           "--test-size", "128", "--target", "0.01", "--cap-reference", "20",
                           "--cap-course", "20", "--threads", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "Time to 0.01 test accuracy on Fashion-MNIST, evaluated every 1/4 epoch"
    assert lines[1].startswith("machine: ") and "torch " in lines[1] and "PyTorch threads: 1" in lines[1]
    assert "128 training and 128 test images" in done.stdout and "not a measurement" in done.stdout
    assert "flips; cap" not in done.stdout and "no augmentation; cap 20 s" in done.stdout
    assert re.fullmatch(rf"reference: {REACHED}", lines[-3]), lines[-3]
    assert re.fullmatch(rf"course: {REACHED}", lines[-2]), lines[-2]
    assert re.fullmatch(r"ratio: \d+\.\dx \(reference time / course time\)", lines[-1]), lines[-1]


# --- the race ----------------------------------------------------------------------------------

def toy_race(bench, *, target: float, cap: float = 60.0, epochs: int | None = 2, batches: int = 8):
    torch.manual_seed(0)
    X, y = torch.randn(batches * 4, 3), torch.randint(0, 2, (batches * 4,))
    train = [(X[i:i + 4], y[i:i + 4]) for i in range(0, len(y), 4)]
    net = nn.Linear(3, 2)
    step = bench.make_step(net, torch.optim.SGD(net.parameters(), lr=0.1), nn.CrossEntropyLoss())
    return bench.race("toy", net, train, [(X, y)], step, target=target, cap=cap, evals_per_epoch=4,
                      epochs=epochs)


def test_a_race_evaluates_every_quarter_epoch_and_stops_at_the_first_evaluation_on_target(bench, capsys):
    result = toy_race(bench, target=0.01)
    assert result.reached and result.epochs == 0.25 and result.accuracy >= 0.01
    assert capsys.readouterr().out.count("test acc") == 1

    result = toy_race(bench, target=1.5)  # never reached: every quarter of both epochs is scored
    printed = capsys.readouterr().out
    assert re.findall(r"epoch +(\d\.\d\d)", printed) == ["0.25", "0.50", "0.75", "1.00",
                                                        "1.25", "1.50", "1.75", "2.00"]
    assert not result.reached and result.epochs == 2.0 and result.stopped == "the end of its 2 epochs"
    assert re.fullmatch(rf"toy: {NOT_REACHED}", bench.result_line("toy", result))


def test_a_race_stops_at_its_cap(bench):
    result = toy_race(bench, target=1.5, cap=1e-9, epochs=None)
    assert not result.reached and result.accuracy is None and result.stopped == "its cap of 1e-09 s"
    assert re.fullmatch(rf"toy: {NOT_REACHED}", bench.result_line("toy", result))


def test_the_ratio_is_at_least_the_cap_over_the_course_time_when_the_reference_stops_at_its_cap(bench):
    course = bench.Result(True, 100.0, 3.75, 0.9012)
    capped = bench.Result(False, 3600.5, 2.5, 0.8874, "its cap of 3600 s")
    assert bench.ratio_line(capped, course, 3600, 0.9) == \
        "ratio: at least 36.0x (the reference's cap / course time)"
    assert bench.ratio_line(bench.Result(True, 2000.0, 4.0, 0.9001), course, 3600, 0.9) == \
        "ratio: 20.0x (reference time / course time)"
    short = bench.Result(False, 300.0, 4.0, 0.8990, "the end of its 4 epochs")
    assert bench.ratio_line(capped, short, 3600, 0.9) == "ratio: none (the course's recipe did not reach 0.9)"


# --- the command line and the networks ---------------------------------------------------------

@pytest.mark.parametrize("option, value, message", [
    ("--target", "0", "must be above 0 and below 1"), ("--target", "1", "must be above 0 and below 1"),
    ("--target", "1.5", "must be above 0 and below 1"), ("--target", "nan", "must be above 0 and below 1"),
    ("--target", "high", "expected a number"), ("--cap-reference", "0", "must be above 0"),
    ("--cap-course", "-5", "must be above 0"), ("--threads", "0", "must be at least 1"),
    ("--evals-per-epoch", "0", "must be at least 1"), ("--course-epochs", "2.5", "expected an integer"),
    ("--train-size", "0", "must be at least 1"),
])
def test_settings_out_of_range_are_refused_with_a_clear_error(bench, capsys, option, value, message):
    with pytest.raises(SystemExit) as stop:
        bench.parse_args([option, value])
    assert stop.value.code == 2
    assert f"argument {option}: {message}" in capsys.readouterr().err


def test_the_defaults_are_those_of_the_specification(bench):
    args = bench.parse_args([])
    assert (args.target, args.threads, args.evals_per_epoch, args.course_epochs) == (0.90, 2, 4, 4)
    assert (args.cap_reference, args.cap_course, args.train_size, args.test_size) == (3600, 1200, None, None)


def test_the_networks_have_chapter_12s_layout_and_parameter_counts(bench):
    course, reference = bench.course_net(), bench.reference_net()
    assert count_parameters(course) == 175_258  # chapter 12's ResNet-14
    assert count_parameters(reference) == 11_175_370  # chapter 12's ResNet-18, the notes' layout
    sides = [course[:i](torch.zeros(2, 1, 28, 28)).shape[-1] for i in (3, 5, 7, 9)]
    assert sides == [28, 14, 7, 4]  # the stem, then each stage halves the size
    assert course(torch.zeros(2, 1, 28, 28)).shape == reference(torch.zeros(2, 1, 96, 96)).shape == (2, 10)


def test_the_course_recipe_trains_without_augmentation_unless_asked(bench):
    plain, augmented = bench.course_recipe(4), bench.course_recipe(4, augmentation=True)
    assert (plain.translate, plain.flip, plain.make_augment(0, "cpu", 0.0)) == (0, False, None)
    assert (augmented.translate, augmented.flip) == (2, True)
    # nothing else differs: chapter 12's quick settings over the given epochs
    assert replace(augmented, translate=0, flip=False) == plain
    assert (plain.epochs, plain.batch_size, plain.lr, plain.schedule, plain.channels_last) == (4, 128, 0.1, "one-cycle", True)
    assert bench.parse_args([]).course_augmentation is False
    assert bench.parse_args(["--course-augmentation"]).course_augmentation is True
