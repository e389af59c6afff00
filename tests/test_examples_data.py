"""Offline data loaders of the examples: CIFAR-10 (both formats), IDX/MNIST, digits, teacher-student."""

from __future__ import annotations

import gzip
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.datasets import (
    CIFAR10_URL,
    MNIST_FILES,
    DatasetFormatError,
    DatasetNotFoundError,
    digits_binary,
    mnist_binary,
    read_cifar10,
    read_cifar10_binary,
    read_cifar10_pickle,
    read_idx,
    subset,
    synthetic_cifar,
    teacher_student_regression,
    write_cifar10_binary,
    write_cifar10_pickle,
    write_idx,
)

TRAIN_BIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
TRAIN_PY = [f"data_batch_{i}" for i in range(1, 6)]


def _batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, size=n)


def _write_cifar(folder: Path, fmt: str, per_file: int = 3, seed: int = 0, protocol: int = 2) -> dict:
    """Write a complete small CIFAR-10 directory; return the arrays written per file name."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images, labels = _batch(rng, per_file)
        if fmt == "binary":
            write_cifar10_binary(folder / f"{stem}.bin", images, labels)
        else:
            write_cifar10_pickle(folder / stem, images, labels, protocol=protocol)
        written[stem] = (images, labels)
    return written


# ------------------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize(
    ("fmt", "protocol", "subdir"),
    [
        ("binary", None, ""),
        ("binary", None, "cifar-10-batches-bin"),
        ("python", 2, "cifar-10-batches-py"),
        ("python", 4, ""),
        ("python", 5, ""),
    ],
    ids=["binary", "binary-archive-dir", "python-p2-archive-dir", "python-p4", "python-p5"],
)
def test_read_cifar10_round_trip(tmp_path: Path, fmt: str, protocol: int | None, subdir: str) -> None:
    written = _write_cifar(tmp_path / subdir, fmt, protocol=protocol or 2)
    images, labels = read_cifar10(tmp_path, "train")
    assert images.shape == (15, 3, 32, 32) and images.dtype == np.uint8
    assert labels.shape == (15,) and labels.dtype == np.int64
    expected = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(
        labels, np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    )
    test_images, test_labels = read_cifar10(tmp_path, "test", format=fmt)
    np.testing.assert_array_equal(test_images, written["test_batch"][0])
    np.testing.assert_array_equal(test_labels, written["test_batch"][1])


def test_binary_pixel_layout_is_channel_major(tmp_path: Path) -> None:
    # one record: label 7, then 1024 red, 1024 green, 1024 blue bytes
    record = bytes([7]) + bytes([10]) * 1024 + bytes([20]) * 1024 + bytes([30]) * 1023 + bytes([31])
    path = tmp_path / "one.bin"
    path.write_bytes(record)
    images, labels = read_cifar10_binary(path)
    assert labels.tolist() == [7]
    assert images[0, 0].min() == images[0, 0].max() == 10
    assert images[0, 1].min() == 20 and images[0, 2, 0, 0] == 30 and images[0, 2, 31, 31] == 31


def test_auto_prefers_binary_when_both_formats_present(tmp_path: Path) -> None:
    binary = _write_cifar(tmp_path, "binary", seed=1)
    _write_cifar(tmp_path, "python", seed=2)
    images, _ = read_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(images, binary["test_batch"][0])


def test_truncated_binary_batch_names_file_and_record_size(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "binary")
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetFormatError, match=r"data_batch_3\.bin.*3073.*truncated"):
        read_cifar10(tmp_path, "train")


def test_binary_label_out_of_range(tmp_path: Path) -> None:
    images, labels = _batch(np.random.default_rng(0), 4)
    labels[2] = 10
    path = write_cifar10_binary(tmp_path / "test_batch.bin", images, labels)
    with pytest.raises(DatasetFormatError, match=r"test_batch\.bin.*0\.\.9.*found 10 at record 2"):
        read_cifar10_binary(path)


def test_pickle_label_out_of_range(tmp_path: Path) -> None:
    images, labels = _batch(np.random.default_rng(0), 4)
    path = write_cifar10_pickle(tmp_path / "test_batch", images, [*labels[:3].tolist(), 12])
    with pytest.raises(DatasetFormatError, match=r"test_batch.*0\.\.9.*found 12 at record 3"):
        read_cifar10_pickle(path)


class _ShellPayload:
    """Pickles as a call to os.system: unpickling it with plain pickle runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _EvalPayload:
    """Pickles as a call to builtins.eval."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",))


@pytest.mark.parametrize(
    ("payload", "global_name"),
    [(_ShellPayload, r"\w+\.system"), (_EvalPayload, r"\w+\.eval")],
    ids=["os.system", "builtins.eval"],
)
def test_malicious_pickle_is_refused_and_not_executed(
    tmp_path: Path, payload: type, global_name: str
) -> None:
    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": payload(marker), b"labels": [0]}, protocol=2)
    # control: the payload is live, plain pickle executes it
    pickle.loads(blob)
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "data_batch_1"
    path.write_bytes(blob)
    pattern = rf"data_batch_1.*refusing.*{global_name}.*Nothing from it was executed"
    with pytest.raises(DatasetFormatError, match=pattern):
        read_cifar10_pickle(path)
    assert not marker.exists()


def test_pickle_with_wrong_array_dtype_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072)), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(DatasetFormatError, match=r"uint8 array of shape \(N, 3072\), found float64"):
        read_cifar10_pickle(path)


def test_truncated_pickle_names_file(tmp_path: Path) -> None:
    images, labels = _batch(np.random.default_rng(0), 2)
    path = write_cifar10_pickle(tmp_path / "data_batch_2", images, labels)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetFormatError, match=r"data_batch_2: not a readable CIFAR-10 python batch"):
        read_cifar10_pickle(path)


def test_missing_cifar_names_expected_files_and_source(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        read_cifar10(tmp_path / "nowhere", "train")
    message = str(info.value)
    for name in [*TRAIN_BIN, *TRAIN_PY]:
        assert name in message
    assert CIFAR10_URL in message and "does not exist" in message


def test_incomplete_cifar_directory_is_not_found(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "binary")
    (tmp_path / "data_batch_5.bin").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"data_batch_5\.bin"):
        read_cifar10(tmp_path, "train", format="binary")


def test_subset_by_classes_and_size_is_seeded() -> None:
    labels = np.arange(100) % 10
    images = np.arange(100)
    x1, y1 = subset(images, labels, n=8, classes=[3, 5], seed=4)
    x2, y2 = subset(images, labels, n=8, classes=[3, 5], seed=4)
    x3, _ = subset(images, labels, n=8, classes=[3, 5], seed=5)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert set(labels[x1]) <= {3, 5}
    np.testing.assert_array_equal(y1, (labels[x1] == 5).astype(np.int64))
    with pytest.raises(ValueError, match="only 20 are available"):
        subset(images, labels, n=21, classes=[3, 5])


def test_synthetic_cifar_is_deterministic_and_learnable() -> None:
    x1, y1 = synthetic_cifar(64, classes=[2, 7], seed=3)
    x2, y2 = synthetic_cifar(64, classes=[2, 7], seed=3)
    xt, yt = synthetic_cifar(64, classes=[2, 7], seed=3, split="test")
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.shape == (64, 3, 32, 32) and x1.dtype == np.uint8 and set(y1) == {2, 7}
    assert not np.array_equal(x1, xt)
    # same templates in both splits: class means agree across splits far better than across classes
    splits = (("tr", x1, y1), ("te", xt, yt))
    mean = {(s, c): x[y == c].astype(float).mean(0) for s, x, y in splits for c in (2, 7)}
    same = np.abs(mean["tr", 2] - mean["te", 2]).mean()
    other = np.abs(mean["tr", 2] - mean["te", 7]).mean()
    assert same < other / 3


# --------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize(
    ("dtype", "shape", "suffix"),
    [("uint8", (5, 4, 3), ""), ("uint8", (7,), ".gz"), ("int32", (3, 2), ""), ("float32", (2, 2, 2), ".gz")],
    ids=["u8-3d", "u8-1d-gz", "i32-2d", "f32-3d-gz"],
)
def test_idx_round_trip(tmp_path: Path, dtype: str, shape: tuple[int, ...], suffix: str) -> None:
    array = (np.arange(np.prod(shape)) * 3 - 2).astype(dtype).reshape(shape)
    if dtype == "uint8":
        array = (np.arange(np.prod(shape)) % 256).astype(dtype).reshape(shape)
    path = write_idx(tmp_path / f"a.idx{suffix}", array)
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


def test_idx_header_is_big_endian(tmp_path: Path) -> None:
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 0x0C, 1, 0, 0, 0, 2]) + (258).to_bytes(4, "big") + (1).to_bytes(4, "big"))
    assert read_idx(path).tolist() == [258, 1]


def test_idx_truncated_names_file_and_expected_size(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((10, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    pattern = r"train-images-idx3-ubyte: expected 7840 data bytes.*found 7835.*truncated"
    with pytest.raises(DatasetFormatError, match=pattern):
        read_idx(path)


def test_idx_truncated_gzip_names_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x.gz", np.arange(1000, dtype=np.uint8).reshape(10, 100))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DatasetFormatError, match=r"x\.gz: not a readable gzip file"):
        read_idx(path)


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        (b"\x00\x00", "at least the 4-byte IDX magic number"),
        (b"\x12\x34\x08\x01\x00\x00\x00\x01\x05", "must start with two zero bytes"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown IDX dtype code 0x07"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x01", "header declares 3 dimensions"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x05\x06", "1 trailing bytes"),
    ],
    ids=["short", "magic", "dtype-code", "short-header", "trailing"],
)
def test_idx_malformed(tmp_path: Path, raw: bytes, pattern: str) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(raw)
    with pytest.raises(DatasetFormatError, match=rf"bad-idx.*{pattern}"):
        read_idx(path)


def _write_mnist(root: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    image_name, label_name = MNIST_FILES[split]
    suffix = ".gz" if gz else ""
    write_idx(root / f"{image_name}{suffix}", images)
    write_idx(root / f"{label_name}{suffix}", labels)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_mnist_binary(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    labels = (np.arange(30) % 10).astype(np.uint8)
    _write_mnist(tmp_path, "train", images, labels, gz)
    x, y = mnist_binary(tmp_path, classes=(7, 3))
    keep = np.isin(labels, [7, 3])
    assert x.shape == (6, 784) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), images[keep].reshape(6, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y.numpy(), (labels[keep] == 3).astype(np.int64))
    x2, _ = mnist_binary(tmp_path, classes=(7, 3), n=4, seed=1)
    assert x2.shape == (4, 784)


def test_mnist_missing_names_all_four_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        mnist_binary(tmp_path, split="test")
    for name in [n for pair in MNIST_FILES.values() for n in pair]:
        assert name in str(info.value)


def test_mnist_image_label_count_mismatch(tmp_path: Path) -> None:
    _write_mnist(tmp_path, "test", np.zeros((4, 28, 28), np.uint8), np.zeros(5, np.uint8), gz=False)
    with pytest.raises(DatasetFormatError, match=r"holds 4 images but .* holds 5 labels"):
        mnist_binary(tmp_path, split="test")


# -------------------------------------------------------------------------- digits, teacher-student


def test_digits_binary_shapes() -> None:
    pytest.importorskip("sklearn")
    x, y = digits_binary((0, 1))
    assert x.shape == (360, 64) and x.dtype == torch.float32
    assert y.shape == (360,) and set(y.tolist()) == {0, 1}
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    x38, y38 = digits_binary((8, 3))
    assert x38.shape[0] == int((y38 == 0).sum() + (y38 == 1).sum()) == 357
    with pytest.raises(ValueError, match="exactly 2 classes"):
        digits_binary((0, 1, 2))


def test_teacher_student_deterministic_by_seed() -> None:
    x1, y1 = teacher_student_regression(n=32, d=8, width=16, outputs=2, seed=5)
    x2, y2 = teacher_student_regression(n=32, d=8, width=16, outputs=2, seed=5)
    x3, y3 = teacher_student_regression(n=32, d=8, width=16, outputs=2, seed=6)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.allclose(x1, x3) and not torch.allclose(y1, y3)
    assert x1.shape == (32, 8) and y1.shape == (32, 2) and y1.dtype == torch.float32
    torch.testing.assert_close(x1.norm(dim=1), torch.full((32,), 8**0.5))
    torch.testing.assert_close(y1.std(dim=0), torch.ones(2), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y1.mean(dim=0), torch.zeros(2), rtol=0, atol=1e-5)
    state = torch.random.get_rng_state()
    teacher_student_regression(seed=0)
    assert torch.equal(state, torch.random.get_rng_state())


def test_gzip_detected_by_content(tmp_path: Path) -> None:
    # a gzipped IDX file without the .gz suffix is still read
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3])))
    assert read_idx(path).tolist() == [1, 2, 3]


def test_digits_without_sklearn_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import of it raises ImportError
    with pytest.raises(ImportError, match=r"pip install lightning-lplr\[digits\]"):
        digits_binary()
