"""Offline data for the examples: nothing here downloads anything.

Four sources:

- :func:`teacher_student_regression`: a random teacher network's outputs on inputs on a sphere,
  generated in memory (the default data of the MLP example).
- :func:`digits_binary`: two classes of scikit-learn's bundled 8×8 handwritten digits (real data
  shipped inside scikit-learn; ``pip install lightning-lplr[digits]``).
- :func:`mnist_binary`: two classes of MNIST read from the four local IDX files with our own IDX
  parser (:func:`read_idx`).
- :func:`read_cifar10`: CIFAR-10 from a local directory in either official format, the binary
  version (``data_batch_1.bin`` … ``test_batch.bin``) or the python version (pickles read with a
  restricted unpickler that only rebuilds numpy ``uint8`` arrays and executes nothing);
  :func:`subset` picks classes and a seeded sample; :func:`synthetic_cifar` generates look-alike
  data for smoke runs.

Writers for the same formats (:func:`write_idx`, :func:`write_cifar10_binary`,
:func:`write_cifar10_pickle`) let tests and users build small files.

Array conventions: images are ``uint8`` with shape ``(N, C, H, W)`` (CIFAR-10: ``(N, 3, 32, 32)``,
the official channel-major layout); labels are ``int64`` with shape ``(N,)``. Loaders that return
torch tensors say so.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_URL",
    "MNIST_FILES",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "digits_binary",
    "mnist_binary",
    "read_cifar10",
    "read_cifar10_binary",
    "read_cifar10_pickle",
    "read_idx",
    "subset",
    "synthetic_cifar",
    "teacher_student_regression",
    "write_cifar10_binary",
    "write_cifar10_pickle",
    "write_idx",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
"""Where the official CIFAR-10 archives are published."""

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
"""CIFAR-10 class names, indexed by label."""

MNIST_URL = "http://yann.lecun.com/exdb/mnist/"

MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""The four official MNIST files (images, labels) per split; each may also be gzipped (``.gz``)."""

_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_DIRS = ("", "cifar-10-batches-bin", "cifar-10-batches-py")


class DatasetNotFoundError(FileNotFoundError):
    """Local data files are missing; the message names the expected files and where to get them."""


class DatasetFormatError(ValueError):
    """A local data file is truncated, malformed or unsafe; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------------
# teacher-student regression and scikit-learn digits
# --------------------------------------------------------------------------------------------------


def teacher_student_regression(
    n: int = 128,
    d: int = 16,
    width: int = 64,
    outputs: int = 1,
    seed: int = 0,
    noise: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Regression data labelled by a random one-hidden-layer ``tanh`` teacher network.

    Inputs are drawn uniformly on the sphere of radius ``√d`` (unit mean square per coordinate,
    the setting of NTK theory, where distinct non-parallel inputs make the NTK positive definite).
    Targets are ``y = a · tanh(W x / √d) / √width`` with ``W``, ``a`` standard normal, then centred
    and scaled to unit variance per output, plus optional Gaussian ``noise``.

    Args:
        n: Number of samples.
        d: Input dimension.
        width: Hidden width of the teacher.
        outputs: Number of outputs ``O``.
        seed: Seed of a private generator; the global RNG is untouched.
        noise: Standard deviation of label noise added after standardisation.

    Returns:
        ``(x, y)`` float32 tensors of shapes ``(n, d)`` and ``(n, outputs)``; the same seed gives
        the same tensors.

    Raises:
        ValueError: If a size is not positive or ``noise`` is negative.

    Example:
        >>> x, y = teacher_student_regression(n=8, d=4, width=16, outputs=2, seed=0)
        >>> tuple(x.shape), tuple(y.shape)
        ((8, 4), (8, 2))
        >>> bool(torch.allclose(x.norm(dim=1), torch.full((8,), 2.0)))
        True
    """
    for name, value in (("n", n), ("d", d), ("width", width), ("outputs", outputs)):
        if int(value) != value or value < 1:
            raise ValueError(f"teacher_student_regression: {name} must be a positive integer, got {value!r}.")
    if n < 2:
        raise ValueError(f"teacher_student_regression: n must be at least 2 to standardise targets, got {n}.")
    if noise < 0:
        raise ValueError(f"teacher_student_regression: noise must be >= 0, got {noise!r}.")
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(d)
    w = torch.randn(width, d, generator=gen, dtype=torch.float64)
    a = torch.randn(outputs, width, generator=gen, dtype=torch.float64)
    y = torch.tanh(x @ w.T / math.sqrt(d)) @ a.T / math.sqrt(width)
    y = (y - y.mean(dim=0)) / y.std(dim=0).clamp_min(1e-12)
    if noise > 0:
        y = y + noise * torch.randn(n, outputs, generator=gen, dtype=torch.float64)
    return x.float(), y.float()


def digits_binary(classes: Sequence[int] = (0, 1)) -> tuple[Tensor, Tensor]:
    """Two classes of scikit-learn's bundled 8×8 handwritten digits (1797 images, offline).

    Args:
        classes: Two distinct digits in ``0..9``; ``classes[k]`` becomes label ``k``.

    Returns:
        ``(x, y)``: float32 pixels in ``[0, 1]`` of shape ``(N, 64)`` and int64 labels in ``{0, 1}``
        of shape ``(N,)`` (``N = 360`` for digits 0 and 1).

    Raises:
        ImportError: If scikit-learn is not installed.
        ValueError: If ``classes`` is not two distinct digits.
    """
    wanted = _check_classes(classes, 10, "classes", exactly=2)
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "digits_binary needs scikit-learn, which ships the 8×8 digits inside the package (no download): "
            "pip install lightning-lplr[digits]"
        ) from err
    bunch = load_digits()
    images = np.asarray(bunch.data, dtype=np.float32) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    keep = np.isin(labels, wanted)
    y = _remap(labels[keep], wanted)
    return torch.from_numpy(images[keep].copy()), torch.from_numpy(y)


# --------------------------------------------------------------------------------------------------
# IDX (MNIST)
# --------------------------------------------------------------------------------------------------

_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DatasetFormatError(f"{path}: not a readable gzip file ({err}).") from err
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), optionally gzipped.

    Format: a 4-byte magic number ``00 00 <dtype code> <ndim>``, then ``ndim`` big-endian
    ``uint32`` dimension sizes, then the data in big-endian C order. Dtype codes: ``0x08`` uint8,
    ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64. A file is
    treated as gzip when its name ends in ``.gz`` or it starts with the gzip magic bytes.

    Args:
        path: The file.

    Returns:
        A writable array in native byte order with the dtype and shape the header declares.

    Raises:
        DatasetNotFoundError: If the file does not exist.
        DatasetFormatError: If the magic number, dtype code or sizes are wrong, or the data are
            shorter (truncated) or longer than the header declares; the message names the file
            and what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"IDX file not found: {path}")
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise DatasetFormatError(
            f"{path}: expected at least the 4-byte IDX magic number, found {len(data)} bytes "
            "(truncated file?)."
        )
    if data[0] != 0 or data[1] != 0:
        raise DatasetFormatError(
            f"{path}: not an IDX file: the magic number must start with two zero bytes, "
            f"found 0x{data[:4].hex()}."
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DatasetFormatError(f"{path}: unknown IDX dtype code 0x{code:02X}; expected one of {allowed}.")
    if ndim < 1:
        raise DatasetFormatError(f"{path}: IDX header declares {ndim} dimensions; expected at least 1.")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(
            f"{path}: header declares {ndim} dimensions ({header} header bytes) but the file has only "
            f"{len(data)} bytes (truncated file?)."
        )
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header
    if found < expected:
        raise DatasetFormatError(
            f"{path}: expected {expected} data bytes for shape {shape} of {dtype.name}, found {found} "
            "(truncated file?)."
        )
    if found > expected:
        raise DatasetFormatError(
            f"{path}: expected {expected} data bytes for shape {shape} of {dtype.name}, found {found} "
            f"({found - expected} trailing bytes; not an IDX file of this shape)."
        )
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``); inverse of :func:`read_idx`.

    Args:
        path: Destination file.
        array: An array of a dtype IDX supports (uint8, int8, int16, int32, float32, float64).

    Returns:
        The path written.

    Raises:
        ValueError: If the dtype has no IDX code or the array is 0-dimensional.
    """
    path = Path(path)
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("=").str: k for k, v in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("=").str)
    if code is None or array.ndim < 1:
        raise ValueError(f"write_idx: cannot store dtype {array.dtype} with shape {array.shape} in IDX.")
    body = (
        bytes([0, 0, code, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    )
    path.write_bytes(gzip.compress(body) if path.suffix == ".gz" else body)
    return path


def _find_one(root: Path, name: str) -> Path | None:
    for folder in (root, root / "MNIST" / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def mnist_binary(
    root: str | Path,
    classes: Sequence[int] = (0, 1),
    split: Literal["train", "test"] = "train",
    n: int | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Two classes of MNIST from the official IDX files in a local directory.

    The files (each optionally gzipped) are looked up in ``root`` and in ``root/MNIST/raw``:
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``.

    Args:
        root: Directory holding the files.
        classes: Two distinct digits in ``0..9``; ``classes[k]`` becomes label ``k``.
        split: ``"train"`` or ``"test"``.
        n: Keep a seeded random subset of this many samples (all when ``None``).
        seed: Seed of the subset.

    Returns:
        ``(x, y)``: float32 pixels in ``[0, 1]`` of shape ``(N, H·W)`` (``784`` for MNIST) and int64
        labels in ``{0, 1}`` of shape ``(N,)``.

    Raises:
        DatasetNotFoundError: If a file of the split is missing (the message names all four).
        DatasetFormatError: If a file is malformed, or images and labels disagree.
        ValueError: If ``split``, ``classes`` or ``n`` is invalid.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"mnist_binary: split must be one of {sorted(MNIST_FILES)}, got {split!r}.")
    wanted = _check_classes(classes, 10, "classes", exactly=2)
    root = Path(root)
    names = MNIST_FILES[split]
    found = [_find_one(root, name) for name in names]
    if any(p is None for p in found):
        missing = [name for name, p in zip(names, found, strict=True) if p is None]
        every = [name for pair in MNIST_FILES.values() for name in pair]
        raise DatasetNotFoundError(
            f"MNIST {split} files not found under {root} (nor {root / 'MNIST' / 'raw'}): missing {missing}. "
            f"Expected the four files {every} (each may be gzipped, .gz), "
            f"as published at {MNIST_URL} or its mirrors. Nothing is downloaded at run time."
        )
    images_path, labels_path = found
    assert images_path is not None and labels_path is not None
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetFormatError(
            f"{images_path}: expected uint8 images of shape (N, rows, cols), "
            f"found {images.dtype} {images.shape}."
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DatasetFormatError(
            f"{labels_path}: expected uint8 labels of shape (N,), found {labels.dtype} {labels.shape}."
        )
    if len(images) != len(labels):
        raise DatasetFormatError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels."
        )
    if len(labels) and labels.max() > 9:
        raise DatasetFormatError(f"{labels_path}: labels must be in 0..9, found {int(labels.max())}.")
    images, y = subset(images, labels.astype(np.int64), n=n, classes=wanted, seed=seed)
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return torch.from_numpy(x), torch.from_numpy(y)


# --------------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------------


def _cifar_names(split: str, fmt: str) -> list[str]:
    stems = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return [f"{s}.bin" for s in stems] if fmt == "binary" else stems


def _check_cifar_labels(path: Path, labels: np.ndarray) -> None:
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        i = int(bad[0])
        raise DatasetFormatError(
            f"{path}: CIFAR-10 labels must be in 0..9, found {int(labels[i])} at record {i} "
            f"({bad.size} out of range; a CIFAR-100 file?)."
        )


def read_cifar10_binary(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch of the CIFAR-10 binary version (e.g. ``data_batch_1.bin``).

    Each record is 3073 bytes: one label byte (``0..9``) then 3072 pixel bytes (1024 red, 1024
    green, 1024 blue, each 32×32 row-major).

    Args:
        path: The ``.bin`` file.

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``.

    Raises:
        DatasetNotFoundError: If the file does not exist.
        DatasetFormatError: If the size is not a positive multiple of 3073 bytes (truncated) or a
            label is out of ``0..9``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"CIFAR-10 batch not found: {path}")
    raw = path.read_bytes()
    if len(raw) == 0 or len(raw) % _CIFAR_RECORD:
        raise DatasetFormatError(
            f"{path}: size {len(raw)} bytes is not a positive multiple of the {_CIFAR_RECORD}-byte CIFAR-10 "
            f"record (1 label byte + 3072 pixel bytes); the file is truncated or not a CIFAR-10 binary batch "
            f"({len(raw) // _CIFAR_RECORD} whole records, {len(raw) % _CIFAR_RECORD} bytes left over)."
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    _check_cifar_labels(path, labels)
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def write_cifar10_binary(path: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write a CIFAR-10 binary batch; inverse of :func:`read_cifar10_binary`.

    Args:
        path: Destination file.
        images: uint8 ``(N, 3, 32, 32)`` (or ``(N, 3072)``).
        labels: Integer labels ``(N,)`` in ``0..255`` (not checked against ``0..9``, so tests can
            write bad files).

    Returns:
        The path written.
    """
    path = Path(path)
    flat = np.asarray(images, dtype=np.uint8).reshape(len(images), -1)
    body = np.concatenate([np.asarray(labels, dtype=np.uint8).reshape(-1, 1), flat], axis=1)
    path.write_bytes(np.ascontiguousarray(body).tobytes())
    return path


try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.numeric import _frombuffer as _np_frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
    from numpy.core.numeric import _frombuffer as _np_frombuffer


def _latin1_encode(obj: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` restricted to latin-1: how Python 3 pickles ``bytes`` at protocols 0-2."""
    if not isinstance(obj, str) or encoding.lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode({type(obj).__name__}, {encoding!r})")
    return obj.encode("latin1")


_PICKLE_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals numpy needs to rebuild a plain ndarray.

    Resolved names map to fixed objects in :data:`_PICKLE_ALLOWED` (no module named by the file is
    imported); anything else raises :class:`DatasetFormatError` before it can be called.
    """

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            allowed = ", ".join(sorted(f"{m}.{n}" for m, n in _PICKLE_ALLOWED))
            raise DatasetFormatError(
                f"{self._path}: refusing to unpickle the global {module}.{name}. A CIFAR-10 python batch "
                f"only needs numpy's array reconstruction ({allowed}); this file is not an official "
                "CIFAR-10 batch or was altered. Nothing from it was executed."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DatasetFormatError(f"{self._path}: refusing a persistent id in a CIFAR-10 pickle.")


def read_cifar10_pickle(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch of the CIFAR-10 python version (e.g. ``data_batch_1``) without executing code.

    The file is a pickled dict with ``b"data"`` (uint8 ``N×3072``) and ``b"labels"`` (``N`` ints).
    It is read with a restricted unpickler whose ``find_class`` resolves only numpy's ndarray
    reconstruction (``numpy.core.multiarray._reconstruct``, ``numpy._core.multiarray._reconstruct``,
    ``numpy[._]core.numeric._frombuffer``, ``numpy.ndarray``, ``numpy.dtype``) and a latin-1-only
    ``_codecs.encode``; any other global (``os.system``, ``builtins.eval``, …) is refused before
    it can run.

    Args:
        path: The pickle file.

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``.

    Raises:
        DatasetNotFoundError: If the file does not exist.
        DatasetFormatError: If the pickle is corrupt or names a forbidden global, or the content
            is not a CIFAR-10 batch (keys, dtype, shape, label range).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"CIFAR-10 batch not found: {path}")
    with path.open("rb") as fh:
        try:
            obj = _NumpyOnlyUnpickler(fh, path).load()
        except DatasetFormatError:
            raise
        except Exception as err:  # corrupt pickles raise many types: EOFError, UnpicklingError, ...
            raise DatasetFormatError(
                f"{path}: not a readable CIFAR-10 python batch ({type(err).__name__}: {err})."
            ) from err
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict, found {type(obj).__name__}.")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if data is None or labels is None:
        found = sorted(map(repr, obj))
        raise DatasetFormatError(f"{path}: expected keys b'data' and b'labels', found {found}.")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetFormatError(
            f"{path}: expected b'data' to be a uint8 array of shape (N, 3072), found {desc}."
        )
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise DatasetFormatError(
            f"{path}: expected b'labels' to be {len(data)} integers, found {labels.dtype} {labels.shape}."
        )
    labels = labels.astype(np.int64)
    _check_cifar_labels(path, labels)
    return data.reshape(-1, 3, 32, 32).copy(), labels


def write_cifar10_pickle(
    path: str | Path, images: np.ndarray, labels: Sequence[int], protocol: int = 2
) -> Path:
    """Write a CIFAR-10 python batch (``{b"data", b"labels", b"batch_label", b"filenames"}``).

    Args:
        path: Destination file.
        images: uint8 ``(N, 3, 32, 32)`` (or ``(N, 3072)``).
        labels: ``N`` integer labels (written as a list of ints, as in the official files).
        protocol: Pickle protocol.

    Returns:
        The path written.
    """
    path = Path(path)
    flat = np.ascontiguousarray(np.asarray(images, dtype=np.uint8).reshape(len(images), -1))
    payload = {
        b"batch_label": path.name.encode(),
        b"labels": [int(v) for v in labels],
        b"data": flat,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(flat))],
    }
    with path.open("wb") as fh:
        pickle.dump(payload, fh, protocol=protocol)
    return path


def _locate_cifar(root: Path, split: str, fmt: str) -> list[Path] | None:
    for sub in _CIFAR_DIRS:
        folder = root / sub if sub else root
        paths = [folder / name for name in _cifar_names(split, fmt)]
        if all(p.is_file() for p in paths):
            return paths
    return None


def read_cifar10(
    root: str | Path,
    split: Literal["train", "test"] = "train",
    format: Literal["auto", "binary", "python"] = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Read a CIFAR-10 split from a local directory, in the binary or the python version.

    The files are looked up in ``root`` and in the archives' own subdirectories
    ``root/cifar-10-batches-bin`` and ``root/cifar-10-batches-py``:

    - binary: ``data_batch_1.bin`` … ``data_batch_5.bin`` (train), ``test_batch.bin`` (test);
    - python: ``data_batch_1`` … ``data_batch_5`` (train), ``test_batch`` (test).

    With ``format="auto"`` the binary version wins when both are present.

    Args:
        root: Directory holding the extracted archive.
        split: ``"train"`` (50 000 images) or ``"test"`` (10 000).
        format: ``"auto"``, ``"binary"`` or ``"python"``.

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``, batches concatenated in
        order.

    Raises:
        DatasetNotFoundError: If no complete set of files is found; the message names the expected
            files and where to get them.
        DatasetFormatError: If a file is malformed (see the per-format readers).
        ValueError: If ``split`` or ``format`` is not an allowed value.
    """
    if split not in ("train", "test"):
        raise ValueError(f"read_cifar10: split must be 'train' or 'test', got {split!r}.")
    if format not in ("auto", "binary", "python"):
        raise ValueError(f"read_cifar10: format must be 'auto', 'binary' or 'python', got {format!r}.")
    root = Path(root)
    formats = ["binary", "python"] if format == "auto" else [format]
    for fmt in formats:
        paths = _locate_cifar(root, split, fmt)
        if paths is not None:
            reader = read_cifar10_binary if fmt == "binary" else read_cifar10_pickle
            parts = [reader(p) for p in paths]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    wanted = " or ".join(f"the {fmt} version ({', '.join(_cifar_names(split, fmt))})" for fmt in formats)
    where = ", ".join(str(root / s) if s else str(root) for s in _CIFAR_DIRS)
    hint = "" if root.is_dir() else f" The directory {root} does not exist."
    raise DatasetNotFoundError(
        f"CIFAR-10 {split} split not found: expected {wanted} in one of {where}.{hint} "
        f"Get cifar-10-binary.tar.gz or cifar-10-python.tar.gz from {CIFAR10_URL} and extract it there "
        "(nothing is downloaded at run time), or use synthetic data (synthetic_cifar / --synthetic)."
    )


# --------------------------------------------------------------------------------------------------
# subsets and synthetic data
# --------------------------------------------------------------------------------------------------


def _check_classes(
    classes: Sequence[int], num_classes: int, argname: str, exactly: int | None = None
) -> list[int]:
    values = [int(c) for c in classes]
    if any(int(c) != c for c in classes) or len(set(values)) != len(values) or not values:
        raise ValueError(f"{argname} must be distinct integers, got {list(classes)!r}.")
    if any(c < 0 or c >= num_classes for c in values):
        raise ValueError(f"{argname} must lie in 0..{num_classes - 1}, got {values!r}.")
    if exactly is not None and len(values) != exactly:
        raise ValueError(f"{argname} must hold exactly {exactly} classes, got {values!r}.")
    return values


def _remap(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    lookup = np.full(int(max(int(labels.max(initial=0)), *classes)) + 1, -1, dtype=np.int64)
    lookup[list(classes)] = np.arange(len(classes))
    return lookup[labels]


def subset(
    images: np.ndarray,
    labels: np.ndarray,
    n: int | None = None,
    classes: Sequence[int] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the samples of some classes and a seeded random subset of them.

    Args:
        images: Array with samples along the first axis.
        labels: Integer labels ``(N,)`` in ``0..9``.
        n: Number of samples to keep (all when ``None``).
        classes: Labels to keep; ``classes[k]`` is relabelled ``k``. ``None`` keeps every label
            unchanged.
        seed: Seed of the random choice (``numpy.random.default_rng``).

    Returns:
        ``(images, labels)`` of the kept samples, in their original order.

    Raises:
        ValueError: If ``classes`` is invalid or ``n`` exceeds the samples available.

    Example:
        >>> x, y = subset(np.arange(6), np.array([0, 1, 2, 0, 1, 2]), classes=[2, 0])
        >>> x.tolist(), y.tolist()
        ([0, 2, 3, 5], [1, 0, 1, 0])
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(images) != len(labels):
        raise ValueError(f"subset: {len(images)} images but {len(labels)} labels.")
    if classes is not None:
        wanted = _check_classes(classes, 10, "classes")
        keep = np.flatnonzero(np.isin(labels, wanted))
    else:
        wanted, keep = None, np.arange(len(labels))
    if n is not None:
        if int(n) != n or n < 1:
            raise ValueError(f"subset: n must be a positive integer or None, got {n!r}.")
        if n > len(keep):
            raise ValueError(
                f"subset: asked for n={n} samples but only {len(keep)} are available for classes {classes}."
            )
        keep = np.sort(np.random.default_rng(seed).choice(keep, size=int(n), replace=False))
    kept = labels[keep]
    return images[keep], (_remap(kept, wanted) if wanted is not None else kept)


def synthetic_cifar(
    n: int,
    classes: int | Sequence[int] = 10,
    seed: int = 0,
    split: Literal["train", "test"] = "train",
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-shaped synthetic images with class structure, for smoke runs without the real files.

    Each class has a smooth random colour template (a 4×4×3 Gaussian pattern upsampled to 32×32);
    an image is its class template plus pixel noise, clipped to ``0..255``. The templates depend
    on ``seed`` only (not on ``n`` or ``split``), so the task is learnable and a ``"test"`` split
    is fresh samples of the same task.

    Args:
        n: Number of images.
        classes: Number of classes (labels ``0..classes-1``) or the label values to draw from.
        seed: Seed of the private generators (templates, and samples of each split).
        split: ``"train"`` or ``"test"``: independent samples of the same classes.

    Returns:
        ``(images, labels)``: uint8 ``(n, 3, 32, 32)`` and int64 ``(n,)``.

    Raises:
        ValueError: If ``n`` or ``classes`` is invalid.

    Example:
        >>> x, y = synthetic_cifar(4, classes=[3, 5], seed=0)
        >>> x.shape, x.dtype.name, set(y.tolist()) <= {3, 5}
        ((4, 3, 32, 32), 'uint8', True)
    """
    if int(n) != n or n < 1:
        raise ValueError(f"synthetic_cifar: n must be a positive integer, got {n!r}.")
    if split not in ("train", "test"):
        raise ValueError(f"synthetic_cifar: split must be 'train' or 'test', got {split!r}.")
    values = list(range(int(classes))) if isinstance(classes, int) else _check_classes(classes, 10, "classes")
    if not values:
        raise ValueError(f"synthetic_cifar: need at least one class, got {classes!r}.")
    top = max(values) + 1
    templates = np.random.default_rng([seed, 0]).normal(size=(top, 3, 4, 4))
    templates = np.kron(templates, np.ones((1, 1, 8, 8)))
    rng = np.random.default_rng([seed, 1 if split == "train" else 2])
    labels = rng.choice(np.asarray(values, dtype=np.int64), size=int(n))
    pixels = 128.0 + 45.0 * templates[labels] + 35.0 * rng.normal(size=(int(n), 3, 32, 32))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), labels
