"""Data loading: ``d2l_utils.load_fashion_mnist`` against the usual torchvision recipe.

Target: on a 2-core CPU, d2l_utils serves training batches at least 10x faster
than the reference recipe at every input size (28, 96 and 224 pixels).

The reference recipe is what most PyTorch courses write::

    dataset = torchvision.datasets.FashionMNIST(root, train=True,
                                                transform=Compose([Resize(size), ToTensor()]))
    DataLoader(dataset, batch_size=256, shuffle=True, num_workers=W)

(without ``Resize`` for the native 28x28). Both loaders read the same four IDX
files: the ones ``d2l_utils`` finds, linked (or unpacked) into a temporary
root laid out as torchvision expects. Each measurement iterates over the
training batches of one epoch (60,000 images, batch size 256) and reports
examples per second; only the iteration is timed, not reading the files.

Run it by hand from the project's root (it is not part of the tests)::

    .venv/bin/python bench/data_loading.py                 # whole epochs: slow for 224 pixels
    .venv/bin/python bench/data_loading.py --batches 20    # the first 20 batches at 96 and 224
    .venv/bin/python bench/data_loading.py --workers 0 2 4 --threads 1

``--threads`` sets PyTorch's thread count in this process (it affects
d2l_utils and the reference with ``num_workers=0``; DataLoader workers always
use one thread). Timings on a machine shared with other jobs vary from run to
run: compare the ratios of one run, not numbers across runs.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

from d2l_utils import find_fashion_mnist, load_fashion_mnist
from d2l_utils.data import FILES, _file_in

SIZES = (None, 96, 224)


def torchvision_root(source: Path, target: Path) -> Path:
    """``target/FashionMNIST/raw/<unpacked files>``, linked when the source is unpacked."""
    raw = target / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in FILES:
        path = _file_in(source, stem)
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as packed, open(raw / stem, "wb") as unpacked:
                shutil.copyfileobj(packed, unpacked)
        else:
            (raw / stem).symlink_to(path.resolve())
    return target


def time_batches(batches, limit: int | None) -> tuple[int, float]:
    """Examples served and seconds taken for the first ``limit`` batches (all if None)."""
    n = 0
    start = time.perf_counter()
    for i, (X, y) in enumerate(batches):
        n += len(y)
        if limit is not None and i + 1 >= limit:
            break
    return n, time.perf_counter() - start


def reference(root: Path, size: int | None, batch_size: int, workers: int):
    steps = ([transforms.Resize(size)] if size else []) + [transforms.ToTensor()]
    dataset = torchvision.datasets.FashionMNIST(root, train=True, download=False,
                                                transform=transforms.Compose(steps))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=None, metavar="N",
                        help="time only the first N batches at 96 and 224 pixels (default: all)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="DataLoader num_workers values of the reference (default: 0 2)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for this process (default: PyTorch's choice)")
    parser.add_argument("--root", default=None, help="folder with the four IDX files "
                        "(default: where d2l_utils finds them)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    source = find_fashion_mnist(args.root)
    print(f"Fashion-MNIST from {source}; {os.cpu_count()} cores "
          f"({platform.processor() or platform.machine()}), {torch.get_num_threads()} PyTorch threads, "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"training batches of {args.batch_size}, shuffled; examples per second (higher is better)\n")

    columns = [f"torchvision w={w}" for w in args.workers]
    header = f"{'size':>5} {'batches':>8} " + " ".join(f"{c:>17}" for c in columns)
    header += f" {'d2l_utils':>11} " + " ".join(f"{'x w=' + str(w):>7}" for w in args.workers)
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="fashion-mnist-bench-") as tmp:
        root = torchvision_root(source, Path(tmp))
        load_fashion_mnist(args.batch_size, root=source)  # read and verify once, before timing
        for size in SIZES:
            limit = args.batches if size is not None else None
            speeds = []
            for workers in args.workers:
                n, seconds = time_batches(reference(root, size, args.batch_size, workers), limit)
                speeds.append(n / seconds)
            train_iter, _ = load_fashion_mnist(args.batch_size, resize=size, root=source)
            n, seconds = time_batches(train_iter, limit)
            ours = n / seconds
            shown = f"{limit}" if limit is not None and limit < len(train_iter) else f"{len(train_iter)}"
            row = f"{size or 28:>5} {shown:>8} " + " ".join(f"{s:>17,.0f}" for s in speeds)
            row += f" {ours:>11,.0f} " + " ".join(f"{ours / s:>6.1f}x" for s in speeds)
            print(row, flush=True)
    print("\nxN: d2l_utils' speed divided by the reference's with N DataLoader workers "
          "(target: >= 10x in every column).")


if __name__ == "__main__":
    main()
