"""Fashion-MNIST: find the original IDX files, verify them, and serve batches.

The loader reads the four IDX files itself into one uint8 tensor per split and
keeps that tensor on the training device. A batch is then an index into it,
a division by 255 and, when asked, one batched bilinear resize: no PIL, no
per-image transforms and no worker processes.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

__all__ = [
    "CLASS_NAMES",
    "DataNotFoundError",
    "CorruptDataError",
    "FashionMNIST",
    "Batches",
    "find_fashion_mnist",
    "read_fashion_mnist",
    "load_fashion_mnist",
    "load_splits",
    "Splits",
    "fetch_fashion_mnist",
    "PIXEL_MEAN",
    "PIXEL_STD",
]

CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle boot")

# Mean and standard deviation of the 60,000 training images' pixels, scaled to [0, 1]
# (chapter 1 computes them; tests/test_data.py checks them against the data).
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_DIR = "FASHION_MNIST_DIR"

# SHA-256 of each file's uncompressed bytes, so that a .gz from any source
# (torchvision's download, Debian's package) and an unpacked copy all verify.
FILES = {
    "train-images-idx3-ubyte": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                                (60000, 28, 28)),
    "train-labels-idx1-ubyte": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                                (60000,)),
    "t10k-images-idx3-ubyte": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                               (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                               (10000,)),
}


class DataNotFoundError(FileNotFoundError):
    """No complete copy of Fashion-MNIST was found in any known place."""


class CorruptDataError(ValueError):
    """A Fashion-MNIST file exists but its bytes are not the original ones."""


def cache_dir() -> Path:
    """The project's data cache: $D2L_DATA_DIR, else ~/.cache/d2l_utils/fashion-mnist."""
    if os.environ.get("D2L_DATA_DIR"):
        return Path(os.environ["D2L_DATA_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return base / "d2l_utils" / "fashion-mnist"


def _file_in(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz",
                      directory / "FashionMNIST" / "raw" / stem,
                      directory / "FashionMNIST" / "raw" / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _complete(directory: Path) -> bool:
    return all(_file_in(directory, stem) for stem in FILES)


def _how_to_get_it(searched: list[Path]) -> str:
    places = "\n".join(f"  - {p}" for p in searched)
    return (
        "Fashion-MNIST was not found. Looked in:\n" + places + "\n"
        "Get it in one of these ways:\n"
        "  - on Debian or Ubuntu: sudo apt-get install dataset-fashion-mnist\n"
        "  - with internet access: python -m d2l_utils fetch-data (torchvision's download)\n"
        f"  - a folder holding the four IDX files (.gz or unpacked): set {ENV_DIR}=/path/to/it\n"
        "    or pass root=... to load_fashion_mnist"
    )


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """The directory that holds all four IDX files, searched in a fixed order.

    An explicit ``root`` (or $FASHION_MNIST_DIR) is used alone, so a wrong path
    is an error rather than a silent fall-back. Otherwise: the project's cache,
    then Debian's package path.
    """
    explicit = root if root is not None else os.environ.get(ENV_DIR)
    if explicit:
        directory = Path(explicit).expanduser()
        if not _complete(directory):
            raise DataNotFoundError(_how_to_get_it([directory]))
        return directory
    searched = [cache_dir(), DEBIAN_DIR]
    for directory in searched:
        if _complete(directory):
            return directory
    raise DataNotFoundError(_how_to_get_it(searched))


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # zlib.error: a damaged deflate stream
        raise CorruptDataError(
            f"{path} cannot be read ({err}). Delete it and get the data again "
            "(python -m d2l_utils fetch-data).") from err


def _parse_idx(path: Path, raw: bytes, shape: tuple[int, ...]) -> torch.Tensor:
    """Check an IDX file's header and return its payload as a uint8 tensor."""
    ndim = len(shape)
    header = 4 + 4 * ndim
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if magic != 0x0800 + ndim or dims != shape or len(raw) != header + torch.Size(shape).numel():
        raise CorruptDataError(
            f"{path} is not the expected IDX file: expected shape {shape} and "
            f"{header + torch.Size(shape).numel()} bytes, found magic {magic:#x}, shape {dims}, "
            f"{len(raw)} bytes. Delete it and get the data again.")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


@dataclass(frozen=True)
class FashionMNIST:
    """The whole data set as tensors: images uint8 (N, 28, 28), labels int64 (N,)."""
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    directory: Path


_loaded: dict[Path, FashionMNIST] = {}


def read_fashion_mnist(root: str | os.PathLike | None = None, verify: bool = True) -> FashionMNIST:
    """Read and verify the four IDX files (once per process and directory)."""
    directory = find_fashion_mnist(root).resolve()
    if directory in _loaded:
        return _loaded[directory]
    tensors = []
    for stem, (sha256, shape) in FILES.items():
        path = _file_in(directory, stem)
        raw = _read_bytes(path)
        if verify and hashlib.sha256(raw).hexdigest() != sha256:
            raise CorruptDataError(
                f"{path} does not match the original Fashion-MNIST file (SHA-256 differs). "
                "It may be truncated or from another data set: delete it and get the data again.")
        tensors.append(_parse_idx(path, raw, shape))
    train_images, train_labels, test_images, test_labels = tensors
    data = FashionMNIST(train_images, train_labels.long(), test_images, test_labels.long(), directory)
    _loaded[directory] = data
    return data


def bilinear_matrix(n_in: int, n_out: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The (n_out, n_in) matrix of 1-D bilinear interpolation, as F.interpolate computes it
    with ``align_corners=False``: output i reads input position (i + 0.5) n_in / n_out - 0.5."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    low = src.floor().long().clamp(max=n_in - 1)
    high = (low + 1).clamp(max=n_in - 1)
    frac = src - low
    A = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    A.index_put_((rows, low), 1 - frac, accumulate=True)
    A.index_put_((rows, high), frac, accumulate=True)
    return A.to(device=device, dtype=torch.float32)


def _no_autocast(device: torch.device):
    """A context in which mixed precision (``torch.autocast``) is off on ``device``."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class Batches:
    """Mini-batches of (images, labels) drawn from tensors that already sit on the device.

    Images come out as float32 in [0, 1] with shape (B, 1, H, W), the same
    values torchvision's ``ToTensor`` gives, or standardised as ``(x - mean) / std``
    when ``normalize=(mean, std)``. ``shuffle`` draws a new order every
    epoch from a generator seeded once, so a rerun sees the same batches.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 shuffle: bool = False, resize: int | None = None, seed: int = 0,
                 normalize: tuple[float, float] | None = None) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if resize is not None and (not isinstance(resize, int) or resize < 1):
            raise ValueError(f"resize must be None or a positive int, got {resize!r}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.resize = batch_size, shuffle, resize
        self.normalize = normalize
        self.generator = torch.Generator().manual_seed(seed)
        self._matrices: dict = {}
        self._buffers: list[torch.Tensor] = []

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        X = self._scaled(images)
        if self.normalize is not None:
            mean, std = self.normalize
            X = (X - mean) / std
        return X

    def _scaled(self, images: torch.Tensor) -> torch.Tensor:
        side = images.shape[-1]
        if self.resize is None or self.resize == side:
            return images.unsqueeze(1).float().div_(255)
        if self.resize < side:  # shrinking needs antialiasing, which a plain matrix lacks
            return F.interpolate(images.unsqueeze(1).float().div_(255), size=(self.resize, self.resize),
                                 mode="bilinear", align_corners=False, antialias=True)
        # Enlarging: bilinear interpolation is separable, Y = A X A^T, so two matrix
        # products on the small input do the work of F.interpolate; 1/255 rides along in A.
        key = (side, images.device)
        if key not in self._matrices:
            A = bilinear_matrix(side, self.resize, device=images.device)
            self._matrices[key] = (A / 255, A.T.contiguous())
        left, right = self._matrices[key]
        out = self._output((len(images), self.resize, self.resize), images.device)
        # Pixels stay float32 even when a caller evaluates under mixed precision (autocast
        # would compute the products in bfloat16 and refuse the float32 `out`).
        with _no_autocast(images.device):
            torch.matmul(left @ images.float(), right, out=out)
        return out.unsqueeze(1)  # a view: while the caller holds it, `out` counts as in use

    def _output(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A tensor to write the next resized batch into.

        On a CPU a fresh 50 MB tensor (a batch at 224 pixels) costs more in page
        faults than the interpolation itself, so a buffer is reused, but only once
        no tensor handed out before (nor anything autograd saved) still refers to it.
        """
        if device.type != "cpu" or not hasattr(torch._C, "_storage_Use_Count"):
            return torch.empty(shape, device=device)
        for buffer in self._buffers:
            # 2 = this reference plus the temporary one that untyped_storage() makes.
            if buffer.shape == shape and torch._C._storage_Use_Count(buffer.untyped_storage()._cdata) == 2:
                return buffer
        buffer = torch.empty(shape, device=device)
        self._buffers = [*self._buffers[-2:], buffer]
        return buffer

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator).to(self.labels.device) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                index = slice(start, start + self.batch_size)
            else:
                index = order[start:start + self.batch_size]
            yield self._transform(self.images[index]), self.labels[index]


def _subset(images: torch.Tensor, labels: torch.Tensor, size: int | None, seed: int):
    """A class-balanced-in-expectation random subset, the same for a given seed."""
    if size is None or size >= len(labels):
        return images, labels
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"subset size must be None or a positive int, got {size!r}")
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:size]
    keep = keep.sort().values
    return images[keep], labels[keep]


def load_fashion_mnist(batch_size: int, resize: int | None = None, *,
                       device: torch.device | str = "cpu", train_size: int | None = None,
                       test_size: int | None = None, seed: int = 0,
                       root: str | os.PathLike | None = None) -> tuple[Batches, Batches]:
    """Training batches (shuffled) and test batches (in order) of Fashion-MNIST.

    ``train_size``/``test_size`` take a fixed random subset (for quick runs);
    ``resize`` makes square images of that side on the device.
    """
    data = read_fashion_mnist(root)
    train = _subset(data.train_images, data.train_labels, train_size, seed)
    test = _subset(data.test_images, data.test_labels, test_size, seed + 1)
    device = torch.device(device)
    train = [t.to(device) for t in train]
    test = [t.to(device) for t in test]
    return (Batches(*train, batch_size, shuffle=True, resize=resize, seed=seed),
            Batches(*test, batch_size, shuffle=False, resize=resize))


@dataclass(frozen=True)
class Splits:
    """Training, validation and test batches, with what a recipe needs to know about them."""
    train: Batches
    val: Batches
    test: Batches
    device: torch.device
    background: float  # the value a black pixel has after the transform (for padding)

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": self.train.num_examples, "val": self.val.num_examples,
                "test": self.test.num_examples}


def _validation_split(labels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (sorted) of a class-balanced validation set of ``size`` images, and of the rest.

    The split is fixed (its own generator, seed 0): every run, whatever its seed,
    holds out the same images.
    """
    classes = int(labels.max()) + 1
    if size % classes:
        raise ValueError(f"validation must be a multiple of {classes} (the same number per class); got {size}")
    generator = torch.Generator().manual_seed(0)
    held = [torch.nonzero(labels == k).flatten()[torch.randperm(int((labels == k).sum()), generator=generator)
                                                 [:size // classes]] for k in range(classes)]
    val = torch.cat(held).sort().values
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[val] = False
    return val, torch.nonzero(rest).flatten()


def load_splits(batch_size: int, resize: int | None = None, *, device: torch.device | str = "cpu",
                validation: int = 5000, standardize: bool = True, seed: int = 0,
                train_size: int | None = None, test_size: int | None = None,
                root: str | os.PathLike | None = None) -> Splits:
    """Fashion-MNIST as the recipe uses it: training batches (shuffled), a fixed
    class-balanced validation set held out of the training images, and all 10,000
    test images; standardised with the training pixels' mean and std.

    ``train_size`` and ``test_size`` take random subsets of the remaining training
    images and of the test images (for tests: a chapter's results use them all).
    """
    if type(validation) is not int or validation < 10:
        raise ValueError(f"validation must be an int of at least 10 images; got {validation!r}")
    data = read_fashion_mnist(root)
    val_index, train_index = _validation_split(data.train_labels, validation)
    train = _subset(data.train_images[train_index], data.train_labels[train_index], train_size, seed)
    test = _subset(data.test_images, data.test_labels, test_size, seed + 1)
    device = torch.device(device)
    normalize = (PIXEL_MEAN, PIXEL_STD) if standardize else None
    background = -PIXEL_MEAN / PIXEL_STD if standardize else 0.0

    def batches(images, labels, **kwargs):
        return Batches(images.to(device), labels.to(device), batch_size, resize=resize,
                       normalize=normalize, **kwargs)
    return Splits(batches(*train, shuffle=True, seed=seed),
                  batches(data.train_images[val_index], data.train_labels[val_index]),
                  batches(*test), device, background)


def _install_with_apt() -> bool:
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return False
    print("Installing Debian's package dataset-fashion-mnist ...")
    install = ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]
    done = subprocess.run(install, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:  # a stale package list is the usual reason: refresh it once
        subprocess.run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        done = subprocess.run(install, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return done.returncode == 0 and _complete(DEBIAN_DIR)


def _download_with_torchvision(target: Path) -> bool:
    """Download into a temporary folder and move it into place only when complete."""
    from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        try:
            TorchvisionFashionMNIST(tmp, train=True, download=True)
            TorchvisionFashionMNIST(tmp, train=False, download=True)
        except Exception as err:  # no network is the usual reason; say it and go on
            print(f"torchvision's download failed: {err}")
            return False
        staged = Path(tmp) / "staged"
        staged.mkdir()
        for stem in FILES:
            source = _file_in(Path(tmp), stem)
            shutil.copy2(source, staged / source.name)
        read_fashion_mnist(staged)  # verify before it becomes visible
        _loaded.pop(staged.resolve(), None)
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return True


def fetch_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """Make sure a verified copy exists: use one found, else download, else apt-get."""
    try:
        directory = find_fashion_mnist(root)
    except DataNotFoundError:
        if root is not None or os.environ.get(ENV_DIR):
            raise
        if not (_download_with_torchvision(cache_dir()) or _install_with_apt()):
            raise
        directory = find_fashion_mnist()
    read_fashion_mnist(directory)
    return directory
