"""Training and evaluation of classifiers: one loop that every chapter shares."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

__all__ = ["Timer", "EpochStats", "History", "accuracy", "confusion_matrix", "evaluate_accuracy",
           "evaluate_loss", "predict", "step_ms", "train_classifier"]


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that a timer measures it, not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Timer:
    """Wall-clock stopwatch that remembers every lap."""

    def __init__(self) -> None:
        self.laps: list[float] = []
        self._start: float | None = None

    def start(self) -> "Timer":
        self._start = time.perf_counter()
        return self

    def stop(self) -> float:
        if self._start is None:
            raise RuntimeError("Timer.stop() called before Timer.start()")
        self.laps.append(time.perf_counter() - self._start)
        self._start = None
        return self.laps[-1]

    def sum(self) -> float:
        return sum(self.laps)

    def avg(self) -> float:
        return self.sum() / len(self.laps) if self.laps else 0.0

    def __enter__(self) -> "Timer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def step_ms(module: nn.Module, X: torch.Tensor, y: torch.Tensor | None = None, repeats: int = 5) -> float:
    """The fastest of ``repeats`` forward and backward passes of ``module`` on ``X``, in milliseconds.

    The loss is the cross-entropy with the labels ``y``, or the sum of the output when there are
    none (for a single layer). Gradients accumulate and nothing is updated. The fastest pass is the
    one least disturbed by other work on the machine, so networks timed one after the other in the
    same process compare fairly.
    """
    if type(repeats) is not int or repeats < 1:
        raise ValueError(f"repeats must be a whole number of passes, at least 1; got {repeats!r}")
    device = X.device
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = module(X)
        loss = out.sum() if y is None else nn.functional.cross_entropy(out, y)
        loss.backward()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Number of correct predictions in a batch, as a tensor (no device sync)."""
    return (logits.argmax(dim=1) == y).sum()


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """How often each true class (row) was predicted as each class (column), as int64 counts.

    Both arguments are class indices, one per example (``logits.argmax(dim=1)``, not logits).
    """
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
    if predictions.dim() != 1 or labels.dim() != 1:
        raise ValueError("predictions and labels must be 1-D tensors of class indices, got shapes "
                         f"{tuple(predictions.shape)} and {tuple(labels.shape)} "
                         "(for logits, pass logits.argmax(dim=1))")
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels: "
                         "they must pair up one to one")
    for name, t in (("predictions", predictions), ("labels", labels)):
        if t.is_floating_point() or t.is_complex():
            raise ValueError(f"{name} must be integer class indices, got dtype {t.dtype}")
        if len(t) and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"{name} must lie in 0..{num_classes - 1}, "
                             f"got values from {int(t.min())} to {int(t.max())}")
    # Each (true, predicted) pair becomes one index of the flattened matrix: one bincount, no loop.
    pairs = labels.to(predictions.device).long() * num_classes + predictions.long()
    return torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _device_of(net: nn.Module) -> torch.device:
    for p in net.parameters():
        return p.device
    return torch.device("cpu")


def evaluate_accuracy(net: nn.Module, data_iter: Iterable, device: torch.device | None = None,
                      flip: bool = False) -> float:
    """Accuracy of ``net`` over ``data_iter``, in evaluation mode and without gradients.

    ``flip`` averages the logits of each image and its mirror image (test-time augmentation).
    """
    return _evaluate(net, data_iter, device, flip=flip)[1]


def predict(net: nn.Module, data_iter: Iterable, device: torch.device | None = None,
            flip: bool = False) -> torch.Tensor:
    """The predicted class of every example of ``data_iter``, in order, as int64 on the CPU."""
    return _evaluate(net, data_iter, device, flip=flip, keep_predictions=True)[2]


def evaluate_loss(net: nn.Module, data_iter: Iterable, loss_fn: Callable | None = None,
                  device: torch.device | None = None) -> float:
    """Mean loss of ``net`` over ``data_iter`` (cross-entropy unless given)."""
    return _evaluate(net, data_iter, device, loss_fn or nn.CrossEntropyLoss())[0]


def _evaluate(net, data_iter, device=None, loss_fn=None, flip=False, keep_predictions=False):
    if isinstance(net, nn.parallel.DistributedDataParallel):
        # Its forward would exchange buffers with the other processes; an evaluation needs no
        # exchange, since the weights are the same in every process.
        net = net.module
    device = device or _device_of(net)
    was_training = net.training
    net.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    predictions, labels = [], []
    n = 0
    try:
        with torch.no_grad():
            for X, y in data_iter:
                X, y = X.to(device), y.to(device)
                logits = net(X)
                if flip:
                    logits = (logits + net(X.flip(-1))) / 2
                if loss_fn is not None:
                    loss_sum += loss_fn(logits, y) * len(y)
                correct += accuracy(logits, y)
                if keep_predictions:
                    predictions.append(logits.argmax(dim=1))
                    labels.append(y)
                n += len(y)
    finally:  # an interrupted evaluation must not leave the net in evaluation mode
        net.train(was_training)
    if n == 0:
        raise ValueError("evaluation data is empty")
    if keep_predictions:
        return loss_sum.item() / n, correct.item() / n, torch.cat(predictions).cpu(), torch.cat(labels).cpu()
    return loss_sum.item() / n, correct.item() / n, None, None


@dataclass
class EpochStats:
    """What one epoch measured. Loss is the mean per example.

    ``train_loss`` and ``train_acc`` are running means over the epoch's batches, in
    training mode (augmented images, dropout on, weights changing as they go).
    With a validation set ``val_acc`` is measured every epoch and ``test_acc``
    is None: the test set is scored once, after training (``History.test_acc``).
    """
    epoch: int
    train_loss: float
    train_acc: float
    test_acc: float | None
    seconds: float
    examples_per_sec: float
    val_acc: float | None = None


@dataclass
class History:
    """Per-epoch metrics of one training run, printable and plottable."""
    epochs: list[EpochStats] = field(default_factory=list)
    device: str = "cpu"
    input_shape: tuple[int, ...] | None = None  # of one example, e.g. (1, 28, 28)
    test_acc: float | None = None  # scored once after training, when epochs were validated
    predictions: torch.Tensor | None = None  # of every test image, in order, with test_acc
    precision: str | None = None  # how a mixed-precision run computed ("bfloat16 autocast"); None: float32

    HEADER = "epoch  train loss  train acc  test acc       time   examples/s"
    VAL_HEADER = "epoch  train loss  train acc   val acc       time   examples/s"

    @staticmethod
    def format_row(s: EpochStats) -> str:
        # The timing columns stand apart so one sanitizer pattern covers them.
        held_out = s.val_acc if s.val_acc is not None else s.test_acc
        return (f"{s.epoch:5d}  {s.train_loss:10.4f}  {s.train_acc:9.3f}  {held_out:8.3f}"
                f"  {s.seconds:7.1f} s  {s.examples_per_sec:9,.0f}/s")

    @property
    def validated(self) -> bool:
        """Whether the epochs were measured on a validation set (the test set kept for the end)."""
        return bool(self.epochs) and self.epochs[0].val_acc is not None

    @property
    def header(self) -> str:
        return self.VAL_HEADER if self.validated else self.HEADER

    def __getitem__(self, key: str) -> list[float]:
        return [getattr(s, key) for s in self.epochs]

    @property
    def final(self) -> EpochStats:
        return self.epochs[-1]

    @property
    def wall_time(self) -> float:
        return sum(s.seconds for s in self.epochs)

    def summary(self) -> str:
        f = self.final
        if self.validated:
            test = "" if self.test_acc is None else f", test acc {self.test_acc:.3f}"
            return (f"train loss {f.train_loss:.4f}, train acc {f.train_acc:.3f}, "
                    f"val acc {f.val_acc:.3f}{test} after {f.epoch} epochs on {self.device}")
        return (f"train loss {f.train_loss:.4f}, train acc {f.train_acc:.3f}, "
                f"test acc {f.test_acc:.3f} after {f.epoch} epochs on {self.device}")

    def __str__(self) -> str:
        return "\n".join([self.header, *map(self.format_row, self.epochs), self.summary()])

    def to_dict(self) -> dict:
        epochs = [asdict(s) for s in self.epochs]
        if not self.validated:  # the records of runs without a validation set keep their old form
            for e in epochs:
                e.pop("val_acc")
        out = {"device": self.device, "input_shape": self.input_shape, "epochs": epochs}
        if self.precision is not None:  # float32 runs keep the records' old form
            out["precision"] = self.precision
        return out

    def plot(self, ax=None, title: str | None = None):
        """Loss and accuracies against the epoch on one axis; returns the axis."""
        from .plot import plot_history
        return plot_history(self, ax=ax, title=title)


def _progress(iterable, total: int, enabled: bool | None, desc: str):
    """A tqdm bar in a terminal; nothing in a notebook, whose output must stay stable."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=False)


def train_classifier(net: nn.Module, train_iter, test_iter=None, *, epochs: int,
                     optimizer: torch.optim.Optimizer, loss_fn: Callable | None = None,
                     device: torch.device | str | None = None, verbose: bool = True,
                     progress: bool | None = None, val_iter=None, scheduler=None,
                     augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     flip_test: bool = False, autocast: torch.dtype | None = None,
                     scaler: "torch.amp.GradScaler | None" = None,
                     reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> History:
    """Train ``net`` for ``epochs`` epochs, evaluating it after each.

    Without ``val_iter`` each epoch is scored on ``test_iter``. With it, each
    epoch is scored on the validation set and ``test_iter`` (if given) once at
    the end, with every test prediction kept (``flip_test`` averages each test
    image with its mirror image). ``scheduler`` is stepped after every batch;
    ``augment`` transforms each training batch on the device. ``reduce`` sums a
    tensor over the processes of a data-parallel run (see ``d2l_utils.distributed``):
    each epoch's loss, correct predictions and example count are then those of
    every process together, and a non-finite loss stops every process alike.

    ``autocast`` (a dtype such as ``torch.bfloat16``) runs the forward passes and the loss
    in mixed precision, evaluation included; ``scaler`` (a ``torch.amp.GradScaler``, needed
    with float16) scales the loss before the backward pass. Without them every step is
    plain float32.

    Prints one line per epoch (when ``verbose``). Loss and accuracy sums stay on
    the device until the epoch ends, so a GPU is never stalled batch by batch.
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if test_iter is None and val_iter is None:
        raise ValueError("give test_iter, val_iter or both: something must score the epochs")
    device = torch.device(device) if device is not None else _device_of(net)
    net.to(device)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    if scaler is not None and autocast is None:
        raise ValueError("a gradient scaler is for mixed precision: give autocast=torch.float16 with it")

    def mixed():
        return torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()

    history = History(device=device.type)
    if autocast is not None:
        history.precision = (f"{str(autocast).removeprefix('torch.')} autocast"
                             + (" with gradient scaling" if scaler is not None else ""))
    if verbose:
        print(History.VAL_HEADER if val_iter is not None else History.HEADER)
    for epoch in range(1, epochs + 1):
        net.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        n = 0
        _synchronize(device)
        timer = Timer().start()
        for X, y in _progress(train_iter, len(train_iter), progress, f"epoch {epoch}"):
            X, y = X.to(device), y.to(device)
            if history.input_shape is None:
                history.input_shape = tuple(X.shape[1:])
            if augment is not None:
                X = augment(X)
            with mixed():
                logits = net(X)
                loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)  # skipped when a gradient overflowed
                scaler.update()
            if scheduler is not None:
                scheduler.step()
            with torch.no_grad():
                loss_sum += loss.detach() * len(y)
                correct += accuracy(logits, y)
            n += len(y)
        _synchronize(device)
        seconds = timer.stop()
        if reduce is not None:
            totals = reduce(torch.stack([loss_sum.double(), correct.double(),
                                         torch.tensor(float(n), dtype=torch.float64, device=device)]))
            loss_sum, correct, n = totals[0], totals[1].long(), int(totals[2])
        if not torch.isfinite(loss_sum):
            raise FloatingPointError(f"the training loss became {loss_sum.item()} in epoch {epoch}: "
                                     "lower the learning rate or check the model's initialisation")
        with mixed():
            held_out = evaluate_accuracy(net, val_iter if val_iter is not None else test_iter, device)
        if val_iter is not None:
            stats = EpochStats(epoch, loss_sum.item() / n, correct.item() / n, None, seconds,
                               n / seconds, val_acc=held_out)
        else:
            stats = EpochStats(epoch, loss_sum.item() / n, correct.item() / n, held_out, seconds, n / seconds)
        history.epochs.append(stats)
        if verbose:
            print(History.format_row(stats), flush=True)
    if val_iter is not None and test_iter is not None:
        with mixed():
            _, history.test_acc, history.predictions, _ = _evaluate(net, test_iter, device, flip=flip_test,
                                                                    keep_predictions=True)
    if verbose:
        print(history.summary())
    return history
