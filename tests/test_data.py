"""Fashion-MNIST: finding, verifying and reading the IDX files, and serving batches.

The reference throughout is torchvision's own decoding of the same files. The
tests read the machine's copy of the data (the one ``make data`` verified) and
build every other folder they need under ``tmp_path`` from copies or links of it.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision import transforms

from d2l_utils import (Batches, CorruptDataError, DataNotFoundError, fetch_fashion_mnist,
                       find_fashion_mnist, load_fashion_mnist, read_fashion_mnist)
from d2l_utils import data as d2l_data

STEMS = tuple(d2l_data.FILES)
SMALL = "t10k-labels-idx1-ubyte"  # the smallest file, for the damaged-file tests


@pytest.fixture(scope="session")
def source() -> dict[str, Path]:
    """The path of each of the four files in the machine's verified copy."""
    try:
        directory = find_fashion_mnist()
    except DataNotFoundError as err:
        pytest.fail("these tests read the real Fashion-MNIST; get it first with "
                    f"`python -m d2l_utils fetch-data`.\n{err}")
    return {stem: d2l_data._file_in(directory, stem) for stem in STEMS}


def _raw(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


@pytest.fixture(scope="session")
def torchvision_root(source, tmp_path_factory) -> Path:
    """A root laid out as torchvision expects: FashionMNIST/raw/<unpacked files>."""
    root = tmp_path_factory.mktemp("torchvision")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem, path in source.items():
        (raw / stem).write_bytes(_raw(path))
    return root


@pytest.fixture(scope="session")
def unpacked(torchvision_root) -> dict[str, Path]:
    """The path of each unpacked file (quick to read again: no gunzip)."""
    return {stem: torchvision_root / "FashionMNIST" / "raw" / stem for stem in STEMS}


@pytest.fixture(scope="session")
def gz_dir(source, tmp_path_factory) -> Path:
    """A flat folder of the four .gz files."""
    folder = tmp_path_factory.mktemp("gz")
    for stem, path in source.items():
        if path.suffix == ".gz":
            (folder / path.name).symlink_to(path)
        else:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
    return folder


@pytest.fixture(scope="session")
def tv_train(torchvision_root):
    return torchvision.datasets.FashionMNIST(torchvision_root, train=True, download=False)


@pytest.fixture(scope="session")
def tv_test(torchvision_root):
    return torchvision.datasets.FashionMNIST(torchvision_root, train=False, download=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_data_in_known_places(tmp_path, monkeypatch):
    """Every known place is empty unless a test fills it: no env folder, empty cache, no Debian copy."""
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.delenv("D2L_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(d2l_data, "DEBIAN_DIR", tmp_path / "debian" / "fashion-mnist")


def linked_copy(source: dict[str, Path], folder: Path, skip: tuple[str, ...] = ()) -> Path:
    """``folder`` holding links to the real files (except ``skip``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, path in source.items():
        if stem not in skip:
            (folder / path.name).symlink_to(path)
    return folder


# --- the pixels and labels are the original ones ---------------------------------------------

def test_pixels_and_labels_equal_torchvisions_decoding_of_all_70000_images(torchvision_root,
                                                                           tv_train, tv_test):
    data = read_fashion_mnist(torchvision_root)
    assert data.train_images.shape == (60000, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (10000, 28, 28)
    assert data.train_labels.dtype == torch.int64
    assert torch.equal(data.train_images, tv_train.data)
    assert torch.equal(data.train_labels, tv_train.targets)
    assert torch.equal(data.test_images, tv_test.data)
    assert torch.equal(data.test_labels, tv_test.targets)


def test_gz_files_and_unpacked_files_give_the_same_tensors(gz_dir, torchvision_root):
    packed, unpacked = read_fashion_mnist(gz_dir), read_fashion_mnist(torchvision_root)
    assert packed.directory != unpacked.directory
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(packed, name), getattr(unpacked, name)), name


def test_test_batches_come_in_order_as_the_floats_totensor_gives(torchvision_root, tv_test):
    _, test_iter = load_fashion_mnist(1000, root=torchvision_root)
    X = torch.cat([X for X, _ in test_iter])
    y = torch.cat([y for _, y in test_iter])
    to_tensor = transforms.ToTensor()
    expected = torch.stack([to_tensor(tv_test[i][0]) for i in range(len(tv_test))])
    assert X.dtype == torch.float32 and X.shape == (10000, 1, 28, 28)
    assert torch.equal(X, expected)
    assert torch.equal(y, tv_test.targets)


# --- resizing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("side", [96, 224])
def test_resize_makes_square_images_equal_to_bilinear_interpolation(gz_dir, side):
    train_iter, test_iter = load_fashion_mnist(64, resize=side, root=gz_dir)
    data = read_fashion_mnist(gz_dir)
    X, y = next(iter(test_iter))
    assert X.shape == (64, 1, side, side) and X.dtype == torch.float32
    expected = F.interpolate(data.test_images[:64].unsqueeze(1).float() / 255, size=(side, side),
                             mode="bilinear", align_corners=False)
    torch.testing.assert_close(X, expected)
    assert torch.equal(y, data.test_labels[:64])
    X_train, _ = next(iter(train_iter))
    assert X_train.shape == (64, 1, side, side)


@pytest.mark.parametrize("side", [14, 96, 224])
def test_resize_matches_torchvisions_resize_recipe_up_to_pixel_rounding(torchvision_root, side):
    # torchvision resizes the uint8 PIL image, so its pixels are rounded to 1/255.
    recipe = torchvision.datasets.FashionMNIST(
        torchvision_root, train=False,
        transform=transforms.Compose([transforms.Resize(side), transforms.PILToTensor()]))
    expected = torch.stack([recipe[i][0] for i in range(32)]).float() / 255
    X, _ = next(iter(load_fashion_mnist(32, resize=side, root=torchvision_root)[1]))
    assert X.shape == expected.shape == (32, 1, side, side)
    assert (X - expected).abs().max() <= 1 / 255 + 1e-6


def test_resize_to_the_native_side_changes_nothing(gz_dir):
    plain = next(iter(load_fashion_mnist(16, root=gz_dir)[1]))[0]
    same = next(iter(load_fashion_mnist(16, resize=28, root=gz_dir)[1]))[0]
    assert torch.equal(plain, same)


# --- where the files are looked for -----------------------------------------------------------

def test_explicit_root_comes_first_and_is_used_alone(source, tmp_path, monkeypatch):
    root = linked_copy(source, tmp_path / "root")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(linked_copy(source, tmp_path / "env")))
    monkeypatch.setenv("D2L_DATA_DIR", str(linked_copy(source, tmp_path / "cache")))
    assert find_fashion_mnist(root) == root
    incomplete = linked_copy(source, tmp_path / "incomplete", skip=(SMALL,))
    with pytest.raises(DataNotFoundError) as err:
        find_fashion_mnist(incomplete)  # no fall-back to the env folder or the cache
    assert str(incomplete) in str(err.value)
    assert str(tmp_path / "cache") not in str(err.value)


def test_fashion_mnist_dir_comes_before_the_cache(source, tmp_path, monkeypatch):
    env = linked_copy(source, tmp_path / "env")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(env))
    monkeypatch.setenv("D2L_DATA_DIR", str(linked_copy(source, tmp_path / "cache")))
    assert find_fashion_mnist() == env
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError):
        find_fashion_mnist()


def test_cache_comes_before_debians_path(source, tmp_path, monkeypatch):
    linked_copy(source, d2l_data.DEBIAN_DIR)
    cache = linked_copy(source, tmp_path / "cache")
    monkeypatch.setenv("D2L_DATA_DIR", str(cache))
    assert find_fashion_mnist() == cache


def test_cache_defaults_to_xdg_cache_home(source, tmp_path):
    linked_copy(source, d2l_data.DEBIAN_DIR)
    cache = linked_copy(source, tmp_path / "xdg-cache" / "d2l_utils" / "fashion-mnist")
    assert d2l_data.cache_dir() == cache
    assert find_fashion_mnist() == cache


def test_debians_path_is_the_last_resort(source, tmp_path, monkeypatch):
    monkeypatch.setenv("D2L_DATA_DIR", str(linked_copy(source, tmp_path / "cache", skip=(SMALL,))))
    debian = linked_copy(source, d2l_data.DEBIAN_DIR)
    assert find_fashion_mnist() == debian


def test_torchvision_layout_is_found(source, tmp_path):
    root = tmp_path / "root"
    linked_copy(source, root / "FashionMNIST" / "raw")
    assert find_fashion_mnist(root) == root


def test_missing_data_raises_and_says_where_it_looked_and_how_to_get_it(source, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("D2L_DATA_DIR", str(cache))
    linked_copy(source, d2l_data.DEBIAN_DIR, skip=(SMALL,))  # an incomplete copy does not count
    with pytest.raises(DataNotFoundError) as err:
        load_fashion_mnist(256)
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert str(cache) in message and str(d2l_data.DEBIAN_DIR) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "python -m d2l_utils fetch-data" in message
    assert "FASHION_MNIST_DIR" in message and "root=" in message


# --- damaged files ----------------------------------------------------------------------------

def _damaged_copy(unpacked, folder: Path, name: str, content: bytes) -> Path:
    """The other three files linked, and ``name`` written with ``content``."""
    linked_copy(unpacked, folder, skip=(SMALL,))
    path = folder / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("packed", [True, False], ids=["gz", "unpacked"])
def test_truncated_file_raises_corrupt_data_error_naming_it(unpacked, tmp_path, packed):
    content = unpacked[SMALL].read_bytes()
    if packed:
        content = gzip.compress(content)
    name = f"{SMALL}.gz" if packed else SMALL
    path = _damaged_copy(unpacked, tmp_path / "data", name, content[: len(content) // 2])
    with pytest.raises(CorruptDataError) as err:
        read_fashion_mnist(tmp_path / "data")
    assert str(path) in str(err.value)


def test_truncated_file_fails_the_header_check_even_without_checksums(unpacked, tmp_path):
    path = _damaged_copy(unpacked, tmp_path / "data", SMALL, unpacked[SMALL].read_bytes()[:-100])
    with pytest.raises(CorruptDataError, match="not the expected IDX file") as err:
        read_fashion_mnist(tmp_path / "data", verify=False)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("offset", [7, 5000], ids=["header", "labels"])
def test_one_flipped_byte_in_an_unpacked_file_raises_corrupt_data_error(unpacked, tmp_path, offset):
    raw = bytearray(unpacked[SMALL].read_bytes())
    raw[offset] ^= 0x01
    path = _damaged_copy(unpacked, tmp_path / "data", SMALL, bytes(raw))
    with pytest.raises(CorruptDataError, match="SHA-256") as err:
        read_fashion_mnist(tmp_path / "data")
    assert str(path) in str(err.value)


def _flipped(packed: bytes, failure: type[Exception]) -> bytes:
    """``packed`` with the first single flipped bit that makes gunzip fail with ``failure``."""
    for offset in range(10, len(packed) - 8):  # the compressed stream, between header and trailer
        damaged = bytearray(packed)
        damaged[offset] ^= 0x01
        try:
            gzip.decompress(bytes(damaged))
        except failure:
            return bytes(damaged)
        except Exception:
            continue
    raise AssertionError(f"no single flipped bit gives {failure.__name__}")


@pytest.mark.parametrize("failure", [zlib.error, gzip.BadGzipFile], ids=["bad-deflate", "bad-crc"])
def test_one_flipped_byte_in_a_gz_file_raises_corrupt_data_error(unpacked, tmp_path, failure):
    damaged = _flipped(gzip.compress(unpacked[SMALL].read_bytes(), mtime=0), failure)
    path = _damaged_copy(unpacked, tmp_path / "data", f"{SMALL}.gz", damaged)
    with pytest.raises(CorruptDataError) as err:
        read_fashion_mnist(tmp_path / "data")
    assert str(path) in str(err.value)
    assert isinstance(err.value.__cause__, failure)


def test_a_file_of_the_other_split_is_rejected(unpacked, tmp_path):
    other = unpacked["train-labels-idx1-ubyte"].read_bytes()
    path = _damaged_copy(unpacked, tmp_path / "data", SMALL, other)
    with pytest.raises(CorruptDataError) as err:
        read_fashion_mnist(tmp_path / "data")
    assert str(path) in str(err.value)


# --- batches ----------------------------------------------------------------------------------

def numbered(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n distinguishable images whose label is their index."""
    images = (torch.arange(n) % 251).to(torch.uint8).view(n, 1, 1).expand(n, 28, 28).contiguous()
    return images, torch.arange(n)


def epochs_of(batches: Batches, count: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    return [list(batches) for _ in range(count)]


def test_shuffling_is_seeded_and_differs_between_epochs():
    images, labels = numbered(1000)
    first = epochs_of(Batches(images, labels, 64, shuffle=True, seed=3), 2)
    again = epochs_of(Batches(images, labels, 64, shuffle=True, seed=3), 2)
    other = epochs_of(Batches(images, labels, 64, shuffle=True, seed=4), 1)
    for epoch, repeat in zip(first, again):
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch, repeat))
    order = [torch.cat([y for _, y in epoch]) for epoch in first]
    assert not torch.equal(order[0], order[1])
    assert not torch.equal(order[0], torch.cat([y for _, y in other[0]]))
    assert not torch.equal(order[0], labels)


def test_every_example_comes_exactly_once_per_epoch_with_its_own_label():
    images, labels = numbered(1000)
    batches = Batches(images, labels, 64, shuffle=True, seed=0)
    assert len(batches) == 16 and batches.num_examples == 1000
    for epoch in epochs_of(batches, 3):
        assert [len(y) for _, y in epoch] == [64] * 15 + [40]
        seen = torch.cat([y for _, y in epoch])
        assert torch.equal(seen.sort().values, labels)
        for X, y in epoch:
            assert torch.equal(X, images[y].unsqueeze(1).float() / 255)


def test_unshuffled_batches_come_in_order():
    images, labels = numbered(100)
    batches = list(Batches(images, labels, 30))
    assert [len(y) for _, y in batches] == [30, 30, 30, 10]
    assert torch.equal(torch.cat([y for _, y in batches]), labels)


def test_training_batches_are_the_same_for_the_same_seed(gz_dir):
    a, _ = load_fashion_mnist(256, train_size=2000, root=gz_dir, seed=5)
    b, _ = load_fashion_mnist(256, train_size=2000, root=gz_dir, seed=5)
    c, _ = load_fashion_mnist(256, train_size=2000, root=gz_dir, seed=6)
    ya, yb, yc = (torch.cat([y for _, y in batches]) for batches in (a, b, c))
    assert torch.equal(ya, yb)
    assert not torch.equal(ya, yc)


def test_subsets_have_the_asked_sizes_and_hold_distinct_real_examples(gz_dir):
    data = read_fashion_mnist(gz_dir)
    train_iter, test_iter = load_fashion_mnist(256, train_size=1000, test_size=300, root=gz_dir)
    assert (train_iter.num_examples, test_iter.num_examples) == (1000, 300)
    assert (len(train_iter), len(test_iter)) == (4, 2)
    assert [len(y) for _, y in test_iter] == [256, 44]
    index = {image.numpy().tobytes(): i for i, image in enumerate(data.train_images)}
    found = [index.get(image.numpy().tobytes()) for image in train_iter.images]
    assert None not in found and len(set(found)) == 1000
    assert torch.equal(train_iter.labels, data.train_labels[found])
    assert set(train_iter.labels.tolist()) == set(range(10))
    again, _ = load_fashion_mnist(256, train_size=1000, root=gz_dir)
    assert torch.equal(again.images, train_iter.images)
    full_train, full_test = load_fashion_mnist(256, train_size=10**6, root=gz_dir)
    assert (full_train.num_examples, full_test.num_examples) == (60000, 10000)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "64", None])
def test_bad_batch_size_raises_value_error(batch_size):
    images, labels = numbered(10)
    with pytest.raises(ValueError, match="batch_size"):
        Batches(images, labels, batch_size)


@pytest.mark.parametrize("resize", [0, -28, 1.5, "96"])
def test_bad_resize_raises_value_error(resize):
    images, labels = numbered(10)
    with pytest.raises(ValueError, match="resize"):
        Batches(images, labels, 4, resize=resize)


@pytest.mark.parametrize("size", [0, -5, 2.5])
def test_bad_subset_size_raises_value_error(gz_dir, size):
    with pytest.raises(ValueError, match="subset size"):
        load_fashion_mnist(256, train_size=size, root=gz_dir)


# --- fetching ---------------------------------------------------------------------------------

class NoDownloads:
    """Stand-ins for torchvision's dataset and apt-get that fail a test when used."""

    def __init__(self, *args, **kwargs):
        raise AssertionError("no download should be attempted")


def test_fetch_with_an_explicit_empty_root_raises_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", NoDownloads)
    monkeypatch.setattr(d2l_data, "_install_with_apt", NoDownloads)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as err:
        fetch_fashion_mnist(empty)
    assert str(empty) in str(err.value)
    assert list(empty.iterdir()) == []
    monkeypatch.setenv("FASHION_MNIST_DIR", str(empty))
    with pytest.raises(DataNotFoundError):
        fetch_fashion_mnist()


def test_fetch_uses_a_copy_it_finds(source, tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", NoDownloads)
    monkeypatch.setattr(d2l_data, "_install_with_apt", NoDownloads)
    debian = linked_copy(source, d2l_data.DEBIAN_DIR)
    assert fetch_fashion_mnist() == debian


def test_failed_download_leaves_nothing_half_written_in_the_cache(source, tmp_path, monkeypatch):
    cache = tmp_path / "cache-parent" / "fashion-mnist"
    monkeypatch.setenv("D2L_DATA_DIR", str(cache))
    tried = []

    class BrokenDownload:
        def __init__(self, root, train=True, download=False, **kwargs):
            raw = Path(root) / "FashionMNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            path = source["train-images-idx3-ubyte"]
            (raw / "train-images-idx3-ubyte.gz").write_bytes(path.read_bytes()[:10000])
            tried.append(root)
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", BrokenDownload)
    monkeypatch.setattr(d2l_data, "_install_with_apt", lambda: False)
    with pytest.raises(DataNotFoundError):
        fetch_fashion_mnist()
    assert tried, "the download was not attempted"
    assert not cache.exists()
    assert list(cache.parent.rglob("*")) == []


def test_download_becomes_visible_only_once_verified(unpacked, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("D2L_DATA_DIR", str(cache))
    monkeypatch.setattr(d2l_data, "_install_with_apt", NoDownloads)
    damage = {"on": True}

    class FakeDownload:  # what torchvision leaves: FashionMNIST/raw/ with .gz and unpacked files
        def __init__(self, root, train=True, download=False, **kwargs):
            raw = Path(root) / "FashionMNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for stem, path in unpacked.items():
                if damage["on"] and stem == SMALL:
                    content = path.read_bytes()
                    (raw / stem).write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
                elif not (raw / stem).exists():  # called once per split
                    (raw / stem).symlink_to(path)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeDownload)
    with pytest.raises(CorruptDataError):
        fetch_fashion_mnist()
    assert not cache.exists() and list(tmp_path.glob("tmp*")) == []

    damage["on"] = False
    assert fetch_fashion_mnist() == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(STEMS)
    assert list(tmp_path.glob("tmp*")) == []
    assert all(not (cache / stem).is_symlink() for stem in STEMS)
    assert torch.equal(read_fashion_mnist(cache).test_labels,
                       read_fashion_mnist(unpacked[SMALL].parents[2]).test_labels)


def test_resized_batches_still_held_are_never_overwritten(gz_dir):
    """Buffers for large resized batches are recycled only when nothing refers to them."""
    data = read_fashion_mnist(gz_dir)
    batches = Batches(data.test_images[:640], data.test_labels[:640], 64, resize=224)
    kept = [X for X, _ in batches]                     # every batch stays alive
    assert len({X.data_ptr() for X in kept}) == len(kept)
    for i, X in enumerate(kept):
        expected = F.interpolate(data.test_images[i * 64:(i + 1) * 64].unsqueeze(1).float() / 255,
                                 size=(224, 224), mode="bilinear", align_corners=False)
        torch.testing.assert_close(X, expected)


def test_resized_batches_reuse_memory_once_released(gz_dir):
    data = read_fashion_mnist(gz_dir)
    batches = Batches(data.test_images[:640], data.test_labels[:640], 64, resize=224)
    pointers = {X.data_ptr() for X, _ in batches}      # each batch dropped before the next
    assert len(pointers) < 10
