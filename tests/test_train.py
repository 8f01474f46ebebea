"""The shared training loop, evaluation, the history it returns and the timer."""

from __future__ import annotations

import copy
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from d2l_utils import (Batches, DataNotFoundError, EpochStats, History, Timer, accuracy,
                       evaluate_accuracy, evaluate_loss, find_fashion_mnist, load_fashion_mnist,
                       step_ms, train_classifier)
from d2l_utils import train as d2l_train


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir():
    try:
        return find_fashion_mnist()
    except DataNotFoundError as err:
        pytest.fail("these tests train on the real Fashion-MNIST; get it first with "
                    f"`python -m d2l_utils fetch-data`.\n{err}")


class FakeClock:
    """Stands in for time.perf_counter: each reading is ``step`` seconds after the last."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 100.0, step

    def perf_counter(self) -> float:
        self.now += self.step
        return self.now


def softmax_regression() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def random_batches(n: int, batch_size: int, seed: int = 0, shuffle: bool = True) -> Batches:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return Batches(images, labels, batch_size, shuffle=shuffle, seed=seed)


# --- learning on real data --------------------------------------------------------------------

def test_softmax_regression_learns_on_a_small_subset(data_dir, capsys):
    train_iter, test_iter = load_fashion_mnist(64, train_size=2000, test_size=1000, root=data_dir)
    net = softmax_regression()
    before = evaluate_accuracy(net, test_iter)
    history = train_classifier(net, train_iter, test_iter, epochs=3, progress=False,
                               optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
    losses = history["train_loss"]
    assert losses[0] > losses[1] > losses[2]
    assert history.final.test_acc > 0.6 > before + 0.3  # chance is 0.1
    assert history.final.train_acc > 0.6
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == History.HEADER
    assert printed[1:4] == [History.format_row(s) for s in history.epochs]
    assert printed[4] == history.summary()
    assert printed[4].endswith("after 3 epochs on cpu")
    assert history.input_shape == (1, 28, 28)  # one example, as the network saw it


def test_verbose_false_prints_nothing():
    net = softmax_regression()
    train_classifier(net, random_batches(100, 50), random_batches(50, 50), epochs=1, verbose=False,
                     progress=False, optimizer=torch.optim.SGD(net.parameters(), lr=0.1))


# --- the history's numbers --------------------------------------------------------------------

def test_without_updates_the_history_equals_one_pass_over_the_data():
    # lr=0: the weights never change, so every epoch must report the same
    # loss and accuracies as one direct computation over all 1,000 examples.
    net = softmax_regression()
    train_iter, test_iter = random_batches(1000, 64, seed=1), random_batches(300, 64, seed=2)
    history = train_classifier(net, train_iter, test_iter, epochs=2, verbose=False, progress=False,
                               optimizer=torch.optim.SGD(net.parameters(), lr=0.0))
    with torch.no_grad():
        X = train_iter.images.unsqueeze(1).float() / 255
        logits = net(X)
        loss = F.cross_entropy(logits, train_iter.labels).item()
        acc = (logits.argmax(1) == train_iter.labels).sum().item() / 1000
        test_logits = net(test_iter.images.unsqueeze(1).float() / 255)
        test_acc = (test_logits.argmax(1) == test_iter.labels).sum().item() / 300
    for stats in history.epochs:
        assert stats.train_loss == pytest.approx(loss, rel=1e-5)
        assert stats.train_acc == pytest.approx(acc, abs=1e-9)
        assert stats.test_acc == pytest.approx(test_acc, abs=1e-9)


def test_train_loss_is_the_mean_per_example_over_uneven_batches():
    # 1,000 examples in batches of 64: fifteen of 64 and one of 40. A mean of
    # batch means would weigh the last 40 examples like 64.
    net = softmax_regression()
    replica = copy.deepcopy(net)
    train_iter, test_iter = random_batches(1000, 64, seed=1), random_batches(300, 64, seed=2)
    same_batches = random_batches(1000, 64, seed=1)
    history = train_classifier(net, train_iter, test_iter, epochs=2, verbose=False, progress=False,
                               optimizer=torch.optim.SGD(net.parameters(), lr=0.5))
    optimizer = torch.optim.SGD(replica.parameters(), lr=0.5)
    for stats in history.epochs:
        losses, hits = [], []
        for X, y in same_batches:
            logits = replica(X)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(F.cross_entropy(logits.detach(), y, reduction="none"))
            hits.append(logits.argmax(1) == y)
        losses, hits = torch.cat(losses), torch.cat(hits)
        assert len(losses) == 1000
        assert stats.train_loss == pytest.approx(losses.mean().item(), rel=1e-5)
        assert stats.train_acc == pytest.approx(hits.sum().item() / 1000, abs=1e-9)
        mean_of_batch_means = torch.stack([c.mean() for c in losses.split(64)]).mean().item()
        assert stats.train_loss != pytest.approx(mean_of_batch_means, rel=1e-7)
    assert history.final.test_acc == evaluate_accuracy(replica, test_iter)


def test_seconds_and_examples_per_second_come_from_the_timer(monkeypatch):
    clock = FakeClock(step=1.25)  # one start and one stop per epoch: 1.25 s each
    monkeypatch.setattr(d2l_train, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    net = softmax_regression()
    history = train_classifier(net, random_batches(1000, 64), random_batches(100, 64), epochs=3,
                               verbose=False, progress=False,
                               optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
    assert history["epoch"] == [1, 2, 3]
    assert history["seconds"] == [1.25, 1.25, 1.25]
    assert history["examples_per_sec"] == [1000 / 1.25] * 3
    assert history.wall_time == 3.75
    assert history.device == "cpu"


def test_history_rows_print_every_metric():
    stats = EpochStats(epoch=2, train_loss=0.51234, train_acc=0.8123, test_acc=0.7999,
                       seconds=12.34, examples_per_sec=4862.3)
    row = History.format_row(stats)
    assert row.split() == ["2", "0.5123", "0.812", "0.800", "12.3", "s", "4,862/s"]
    history = History([stats], device="cpu")
    assert str(history).splitlines() == [History.HEADER, row, history.summary()]
    # without a validation set the record keeps its form: no val_acc
    plain = {k: v for k, v in vars(stats).items() if k != "val_acc"}
    assert history.to_dict() == {"device": "cpu", "input_shape": None, "epochs": [plain]}


# --- failures and argument checks -------------------------------------------------------------

class Poisoned(nn.Module):
    """A linear layer whose output is NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(28 * 28, 10)

    def forward(self, X):
        return self.linear(X.flatten(1)) * float("nan")


def test_nan_loss_raises_floating_point_error_with_advice():
    net = Poisoned()
    with pytest.raises(FloatingPointError) as err:
        train_classifier(net, random_batches(100, 32), random_batches(50, 32), epochs=2,
                         verbose=False, progress=False,
                         optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
    assert "epoch 1" in str(err.value) and "learning rate" in str(err.value)


@pytest.mark.parametrize("epochs", [0, -1, 1.5, True, "3", None])
def test_epochs_must_be_a_positive_int_and_nothing_is_trained_otherwise(epochs):
    net = softmax_regression()
    weights = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(net, random_batches(100, 32), random_batches(50, 32), epochs=epochs,
                         optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())


# --- evaluation -------------------------------------------------------------------------------

class ModeProbe(nn.Module):
    """Softmax regression that remembers whether it ran in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(28 * 28, 10)
        self.modes: list[bool] = []

    def forward(self, X):
        self.modes.append(self.training)
        return self.linear(X.flatten(1))


@pytest.mark.parametrize("training", [True, False], ids=["train-mode", "eval-mode"])
def test_evaluate_accuracy_runs_in_eval_mode_and_restores_the_mode(training):
    net = ModeProbe().train(training)
    evaluate_accuracy(net, random_batches(100, 32))
    assert net.modes == [False] * 4
    assert net.training is training


def test_an_interrupted_evaluation_restores_training_mode():
    def failing_batches():
        yield next(iter(random_batches(32, 32)))
        raise KeyboardInterrupt

    net = ModeProbe().train()
    with pytest.raises(KeyboardInterrupt):
        evaluate_accuracy(net, failing_batches())
    assert net.modes == [False] and net.training


def test_evaluation_uses_no_gradients_and_matches_a_direct_computation():
    net = softmax_regression()
    batches = random_batches(130, 32, shuffle=False)
    X = batches.images.unsqueeze(1).float() / 255
    logits = net(X)
    expected_acc = (logits.argmax(1) == batches.labels).sum().item() / 130
    expected_loss = F.cross_entropy(logits, batches.labels).item()
    assert evaluate_accuracy(net, batches) == pytest.approx(expected_acc, abs=1e-9)
    assert evaluate_loss(net, batches) == pytest.approx(expected_loss, rel=1e-5)
    assert all(p.grad is None for p in net.parameters())


def test_evaluation_of_no_data_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        evaluate_accuracy(softmax_regression(), [])


def test_accuracy_counts_correct_predictions():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 1.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 2])).item() == 2


# --- Timer ------------------------------------------------------------------------------------

def test_timer_records_laps_and_their_sum_and_average(monkeypatch):
    readings = iter([10.0, 12.5, 20.0, 21.0, 30.0, 33.0])
    monkeypatch.setattr(d2l_train, "time", types.SimpleNamespace(perf_counter=lambda: next(readings)))
    timer = Timer()
    assert timer.avg() == 0.0 and timer.sum() == 0.0
    timer.start()
    assert timer.stop() == 2.5
    with timer:
        pass
    assert timer.start() is timer
    timer.stop()
    assert timer.laps == [2.5, 1.0, 3.0]
    assert timer.sum() == 6.5 and timer.avg() == pytest.approx(6.5 / 3)


def test_timer_stop_before_start_is_an_error():
    timer = Timer()
    with pytest.raises(RuntimeError, match="before Timer.start"):
        timer.stop()
    timer.start()
    timer.stop()
    with pytest.raises(RuntimeError):
        timer.stop()


# --- mixed precision ---------------------------------------------------------------------------


def test_a_gradient_scaler_scales_every_step_and_grows_while_no_gradient_overflows():
    torch.manual_seed(0)
    net = softmax_regression()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0, growth_interval=1)
    history = train_classifier(net, random_batches(256, 32), random_batches(64, 32), epochs=1,
                               optimizer=torch.optim.SGD(net.parameters(), lr=0.01), verbose=False,
                               autocast=torch.float16, scaler=scaler)
    assert scaler.get_scale() == 2.0 * 2 ** 8  # doubled after each of the 8 steps
    assert history.precision == "float16 autocast with gradient scaling"


def test_a_scaler_without_autocast_is_refused():
    net = softmax_regression()
    with pytest.raises(ValueError, match="give autocast=torch.float16"):
        train_classifier(net, random_batches(64, 32), random_batches(64, 32), epochs=1,
                         optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
                         scaler=torch.amp.GradScaler("cpu"))


# --- step_ms -----------------------------------------------------------------------------------

class _Counting(nn.Linear):
    def __init__(self):
        super().__init__(3, 2)
        self.calls = 0

    def forward(self, X):
        self.calls += 1
        return super().forward(X)


def test_step_ms_runs_forward_and_backward_once_per_repeat():
    torch.manual_seed(0)
    layer, X = _Counting(), torch.randn(4, 3)
    once = torch.autograd.grad(layer(X).sum(), layer.weight)[0]
    layer.calls = 0
    ms = step_ms(layer, X, repeats=3)
    assert layer.calls == 3
    assert isinstance(ms, float) and ms > 0
    torch.testing.assert_close(layer.weight.grad, 3 * once)  # the sum, backpropagated three times


def test_step_ms_uses_cross_entropy_with_labels():
    torch.manual_seed(0)
    layer, X, y = nn.Linear(3, 2), torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    expected = torch.autograd.grad(nn.functional.cross_entropy(layer(X), y), layer.weight)[0]
    step_ms(layer, X, y, repeats=1)
    torch.testing.assert_close(layer.weight.grad, expected)


@pytest.mark.parametrize("repeats", [0, 2.0, "5"])
def test_step_ms_refuses_a_repeat_count_that_is_not_a_positive_whole_number(repeats):
    with pytest.raises(ValueError, match="repeats must be a whole number of passes, at least 1"):
        step_ms(nn.Linear(3, 2), torch.randn(4, 3), repeats=repeats)
