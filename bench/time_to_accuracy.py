"""Time to accuracy: the course's fastest recipe against the recipe of the notes it grew from.

Target: on a 2-core CPU, the course's recipe reaches 0.90 test accuracy on
Fashion-MNIST at least 20x sooner than the reference recipe, on the same threads.

The reference is the recipe of the "Dive into Deep Learning" notes this course
grew from::

    transform = Compose([Resize(96), ToTensor()])            # no normalisation
    dataset = torchvision.datasets.FashionMNIST(root, train=True, transform=transform)
    DataLoader(dataset, batch_size=128, shuffle=True)         # test set: the same, unshuffled
    ResNet-18, Adam at lr 1e-3, cross-entropy

Its ResNet-18 is torchvision's with a 1-channel first convolution: the same layout
as the notes' (7x7 convolution with stride 2 and 64 channels, BN, ReLU, 3x3 max-pooling
with stride 2, four stages of two basic blocks with 64/128/256/512 channels, global
average pooling, a linear layer 512 -> 10); chapter 12 checks that its own ResNet-18
computes the same function. Unlike the notes', its convolutions have no bias, which
the BN after each cancels anyway.

The course's recipe is chapter 15's fastest short run: the small ResNet for 28x28 images
(chapter 12's ResNet-14: a 3x3 stem, three stages of two basic blocks with 16/32/64
channels, global average pooling, a linear layer; 175,258 parameters), trained under
``d2l_utils.Recipe`` (standardised pixels, label smoothing, SGD with Nesterov momentum
and weight decay on weights only, a one-cycle schedule) with batch size 128, peak
learning rate 0.1 and channels-last weights over 4 epochs, without the random shifts and
flips of chapter 12: chapter 15's records show that in a run of 4 epochs augmentation
costs accuracy (validation accuracy 0.906 after the second epoch without it, 0.859 with
it). ``--course-augmentation`` puts the shifts and flips back.

Each recipe trains until its test accuracy on all 10,000 test images first reaches
``--target``, evaluated every 1/``--evals-per-epoch`` of an epoch, or until its
wall-clock cap; the course's recipe also stops after ``--course-epochs``, where its
schedule ends. Both score the test set the same way (no test-time flips, which
chapter 12 adds), train on all 60,000 training images (a race to a test accuracy
chooses nothing, so it needs no validation set), run one after the other in one
process on the same ``--threads`` PyTorch threads (the DataLoader without worker
processes) and are seeded with ``--seed``. Only training and the evaluations are
timed, not reading the files. The cap is checked before every batch, so a run may
pass it by one batch and one evaluation.

Run it by hand from the project's root, on an otherwise idle machine (it is not part
of the tests; the reference alone may take the hour of its cap)::

    .venv/bin/python bench/time_to_accuracy.py                  # the measurement
    .venv/bin/python bench/time_to_accuracy.py --course-augmentation --cap-reference 1800
    .venv/bin/python bench/time_to_accuracy.py --train-size 128 --test-size 128 --target 0.01 --threads 1

(the last one is the smoke test of tests/test_time_to_accuracy.py, not a measurement).
It ends with three lines (the numbers here only show the format)::

    reference: 2345.6 s to 0.9012 test accuracy (epoch 3.25)
    course: 123.4 s to 0.9031 test accuracy (epoch 3.75)
    ratio: 19.0x (reference time / course time)

where a run that stops short says ``not reached in 3600.8 s (stopped at its cap of
3600 s, epoch 2.50; best test accuracy 0.8874)`` instead, and the ratio
``at least N x`` (the reference's cap / the course's time) when the reference stopped
at its cap, or ``none`` when the course did not reach the target.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from d2l_utils import (PIXEL_MEAN, PIXEL_STD, Batches, Recipe, count_parameters, evaluate_accuracy,
                       find_fashion_mnist, read_fashion_mnist)
from data_loading import torchvision_root

REFERENCE_BATCH, REFERENCE_SIZE, REFERENCE_LR = 128, 96, 1e-3
# Chapter 12's quick profile; its epochs are --course-epochs.
COURSE_BATCH, COURSE_LR = 128, 0.1


@dataclass(frozen=True)
class Result:
    """How a race ended. ``accuracy`` is the one that reached the target, else the best seen."""
    reached: bool
    seconds: float        # to the target, else the time trained
    epochs: float         # at the target, else trained
    accuracy: float | None  # None: stopped before the first evaluation
    stopped: str = ""     # why an unfinished race stopped


# --- the networks ------------------------------------------------------------------------------

def reference_net() -> nn.Module:
    """torchvision's ResNet-18 for 10 classes, its first convolution taking one channel."""
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut, then ReLU; the shortcut is a 1x1 conv with BN
    where the block changes the shape, else the identity."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        same = stride == 1 and c_in == c_out
        self.shortcut = nn.Identity() if same else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(X) + self.shortcut(X))


def course_net(widths: tuple[int, ...] = (16, 32, 64)) -> nn.Module:
    """Chapter 12's ResNet-14: a 3x3 stem, then per width two blocks, the first halving the size."""
    layers: list[nn.Module] = [nn.Conv2d(1, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                               nn.ReLU()]
    c_in = widths[0]
    for width in widths:
        layers += [BasicBlock(c_in, width, stride=2), BasicBlock(width, width, stride=1)]
        c_in = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))


# --- the race ----------------------------------------------------------------------------------

def make_step(net: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, *,
              scheduler=None, augment: Callable | None = None) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One training step on a batch, as ``d2l_utils.train_classifier`` takes it."""
    def step(X: torch.Tensor, y: torch.Tensor) -> None:
        if augment is not None:
            X = augment(X)
        loss = loss_fn(net(X), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return step


def race(name: str, net: nn.Module, train_iter, test_iter, step: Callable, *, target: float, cap: float,
         evals_per_epoch: int, epochs: int | None = None) -> Result:
    """Train with ``step`` until the test accuracy first reaches ``target``, for at most
    ``cap`` seconds and ``epochs`` epochs (None: no limit); prints every evaluation."""
    n = len(train_iter)
    marks = {max(1, k * n // evals_per_epoch) for k in range(1, evals_per_epoch + 1)}
    best: float | None = None
    epoch, done = 0, 0.0
    net.train()
    start = time.perf_counter()
    while epochs is None or epoch < epochs:
        for i, (X, y) in enumerate(train_iter, start=1):
            if time.perf_counter() - start >= cap:
                return Result(False, time.perf_counter() - start, done, best, f"its cap of {cap:g} s")
            step(X, y)
            done = epoch + i / n
            if i in marks:
                accuracy = evaluate_accuracy(net, test_iter)
                seconds = time.perf_counter() - start
                print(f"  {name:<9} epoch {done:5.2f}  test acc {accuracy:.4f}  {seconds:8.1f} s", flush=True)
                if accuracy >= target:
                    return Result(True, seconds, done, accuracy)
                best = accuracy if best is None else max(best, accuracy)
        epoch += 1
    return Result(False, time.perf_counter() - start, done, best, f"the end of its {epochs} epochs")


def subset(n: int, size: int | None, seed: int) -> torch.Tensor | None:
    """Sorted indices of a random subset of ``size`` of ``n`` examples; None: all of them."""
    if size is None or size >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def run_reference(root: Path, train_index, test_index, args) -> Result:
    transform = transforms.Compose([transforms.Resize(REFERENCE_SIZE), transforms.ToTensor()])
    # Reading the files happens here, before the race's clock starts.
    train = torchvision.datasets.FashionMNIST(root, train=True, download=False, transform=transform)
    test = torchvision.datasets.FashionMNIST(root, train=False, download=False, transform=transform)
    train = train if train_index is None else Subset(train, train_index.tolist())
    test = test if test_index is None else Subset(test, test_index.tolist())
    train_iter = DataLoader(train, batch_size=REFERENCE_BATCH, shuffle=True,
                            generator=torch.Generator().manual_seed(args.seed))
    test_iter = DataLoader(test, batch_size=REFERENCE_BATCH)
    torch.manual_seed(args.seed)
    net = reference_net()
    step = make_step(net, torch.optim.Adam(net.parameters(), lr=REFERENCE_LR), nn.CrossEntropyLoss())
    return race("reference", net, train_iter, test_iter, step, target=args.target, cap=args.cap_reference,
                evals_per_epoch=args.evals_per_epoch)


def course_recipe(epochs: int, augmentation: bool = False) -> Recipe:
    """Chapter 15's quick settings; without random shifts and flips unless ``augmentation``."""
    recipe = Recipe(epochs=epochs, batch_size=COURSE_BATCH, lr=COURSE_LR, channels_last=True)
    return recipe if augmentation else replace(recipe, translate=0, flip=False)


def run_course(data, train_index, test_index, args) -> Result:
    recipe = course_recipe(args.course_epochs, args.course_augmentation)
    normalize = (PIXEL_MEAN, PIXEL_STD)
    images, labels = data.train_images, data.train_labels
    if train_index is not None:
        images, labels = images[train_index], labels[train_index]
    test_images, test_labels = data.test_images, data.test_labels
    if test_index is not None:
        test_images, test_labels = test_images[test_index], test_labels[test_index]
    train_iter = Batches(images, labels, recipe.batch_size, shuffle=True, seed=args.seed, normalize=normalize)
    test_iter = Batches(test_images, test_labels, recipe.batch_size, normalize=normalize)
    torch.manual_seed(args.seed)
    net = course_net()
    if recipe.channels_last:
        net.to(memory_format=torch.channels_last)
    optimizer = recipe.make_optimizer(net)
    # A shifted-in border is background: a black pixel after standardising.
    step = make_step(net, optimizer, recipe.make_loss(),
                     scheduler=recipe.make_scheduler(optimizer, len(train_iter)),
                     augment=recipe.make_augment(args.seed, "cpu", fill=-PIXEL_MEAN / PIXEL_STD))
    return race("course", net, train_iter, test_iter, step, target=args.target, cap=args.cap_course,
                evals_per_epoch=args.evals_per_epoch, epochs=recipe.epochs)


# --- the report --------------------------------------------------------------------------------

def result_line(name: str, result: Result) -> str:
    if result.reached:
        return (f"{name}: {result.seconds:.1f} s to {result.accuracy:.4f} test accuracy "
                f"(epoch {result.epochs:.2f})")
    best = "no evaluation" if result.accuracy is None else f"best test accuracy {result.accuracy:.4f}"
    return (f"{name}: not reached in {result.seconds:.1f} s (stopped at {result.stopped}, "
            f"epoch {result.epochs:.2f}; {best})")


def ratio_line(reference: Result, course: Result, cap_reference: float, target: float) -> str:
    if not course.reached:
        return f"ratio: none (the course's recipe did not reach {target:g})"
    if reference.reached:
        return f"ratio: {reference.seconds / course.seconds:.1f}x (reference time / course time)"
    return f"ratio: at least {cap_reference / course.seconds:.1f}x (the reference's cap / course time)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


# --- the command line --------------------------------------------------------------------------

def _bounded(kind: type, low: float, high: float | None = None, open_low: bool = False):
    """An argparse type: a ``kind`` number from ``low`` (excluded when ``open_low``) to ``high`` (excluded)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not ((value > low if open_low else value >= low) and (high is None or value < high)):  # NaN too
            where = f"{'above' if open_low else 'at least'} {low:g}" + (f" and below {high:g}" if high else "")
            raise argparse.ArgumentTypeError(f"must be {where}, got {text}")
        return value
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=_bounded(float, 0, 1, open_low=True), default=0.90,
                        help="test accuracy to reach, between 0 and 1 (default: 0.90)")
    parser.add_argument("--threads", type=_bounded(int, 1), default=2,
                        help="PyTorch threads for both recipes (default: 2)")
    parser.add_argument("--evals-per-epoch", type=_bounded(int, 1), default=4,
                        help="test evaluations per epoch (default: 4, every quarter epoch)")
    parser.add_argument("--cap-reference", type=_bounded(float, 0, open_low=True), default=3600.0,
                        metavar="SECONDS", help="wall-clock cap of the reference (default: 3600)")
    parser.add_argument("--cap-course", type=_bounded(float, 0, open_low=True), default=1200.0,
                        metavar="SECONDS", help="wall-clock cap of the course's recipe (default: 1200)")
    parser.add_argument("--course-epochs", type=_bounded(int, 1), default=4,
                        help="epochs of the course's one-cycle schedule (default: 4, as in chapter 15's "
                             "quick profile)")
    parser.add_argument("--course-augmentation", action="store_true",
                        help="train the course's recipe with random shifts and flips, as chapter 12 "
                             "does (default: without; chapter 15 measured them to cost accuracy in "
                             "runs this short)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-size", type=_bounded(int, 1), default=None, metavar="N",
                        help="train on a random N of the 60,000 images: for smoke tests only")
    parser.add_argument("--test-size", type=_bounded(int, 1), default=None, metavar="N",
                        help="evaluate on a random N of the 10,000 test images: for smoke tests only")
    parser.add_argument("--root", default=None, help="folder with the four IDX files "
                        "(default: where d2l_utils finds them)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    source = find_fashion_mnist(args.root)
    data = read_fashion_mnist(source)  # read and verify once, before timing
    train_index = subset(len(data.train_labels), args.train_size, args.seed)
    test_index = subset(len(data.test_labels), args.test_size, args.seed + 1)
    n_train = len(data.train_labels) if train_index is None else len(train_index)
    n_test = len(data.test_labels) if test_index is None else len(test_index)
    recipe = course_recipe(args.course_epochs, args.course_augmentation)

    print(f"Time to {args.target:g} test accuracy on Fashion-MNIST, "
          f"evaluated every 1/{args.evals_per_epoch} epoch")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores ({platform.machine()}), torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, PyTorch threads: {torch.get_num_threads()}, "
          f"{datetime.now().astimezone().isoformat(timespec='minutes')}")
    whole = train_index is None and test_index is None
    subsets = "" if whole else " (subsets: a smoke test, not a measurement)"
    print(f"data: {n_train:,} training and {n_test:,} test images from {source}{subsets}")
    print(f"reference recipe: ResNet-18 ({count_parameters(reference_net()):,} parameters) "
          f"at {REFERENCE_SIZE} px "
          f"(Resize, ToTensor, DataLoader), batch {REFERENCE_BATCH}, Adam lr {REFERENCE_LR:g}; "
          f"cap {args.cap_reference:g} s")
    augmentation = (f"shifts of up to {recipe.translate} px and flips" if recipe.translate or recipe.flip
                    else "no augmentation")
    print(f"course recipe: ResNet-14 ({count_parameters(course_net()):,} parameters) at 28 px, "
          f"batch {recipe.batch_size}, "
          f"SGD Nesterov lr {recipe.lr:g} {recipe.schedule} over {recipe.epochs} epochs, "
          f"label smoothing {recipe.label_smoothing:g}, weight decay {recipe.weight_decay:g} on weights, "
          f"{augmentation}; cap {args.cap_course:g} s\n", flush=True)

    with tempfile.TemporaryDirectory(prefix="fashion-mnist-bench-") as tmp:
        reference = run_reference(torchvision_root(source, Path(tmp)), train_index, test_index, args)
    course = run_course(data, train_index, test_index, args)

    print()
    print(result_line("reference", reference))
    print(result_line("course", course))
    print(ratio_line(reference, course, args.cap_reference, args.target))


if __name__ == "__main__":
    main()
