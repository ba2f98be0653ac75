"""The MNIST database of handwritten digits, loaded from files shipped inside nnlite.

MNIST was made by Yann LeCun, Corinna Cortes and Christopher J.C. Burges from NIST's Special
Databases 1 and 3 (http://yann.lecun.com/exdb/mnist/). It is distributed under the Creative
Commons Attribution-Share Alike 3.0 license (CC BY-SA 3.0); nnlite redistributes the four
original, unmodified IDX files under those terms.

The dataset holds 60,000 training and 10,000 test images of the digits 0-9, each a 28x28 grayscale
image with pixel values 0 (background) to 255 (ink). ``load_data()`` returns them exactly as
``keras.datasets.mnist.load_data()`` does, but reads the packaged files instead of downloading:
this module never opens a network connection.

File format (IDX, all integers big-endian)::

    offset  size     field
    0       2        zero bytes
    2       1        dtype code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                                 0x0D float32, 0x0E float64
    3       1        ndim, the number of dimensions
    4       4*ndim   one uint32 per dimension, outermost first
    4+4*ndim         the data, row-major (C order), prod(dims) items

Every ``.gz`` file is checked against the SHA-256 listed in ``SHA256SUMS`` (the format written by
``sha256sum``) before it is parsed.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import string
import zlib
from pathlib import Path

import numpy as np

__all__ = ["ChecksumError", "IDXFormatError", "load_data", "load_idx", "load_scaled"]

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
CHECKSUMS = "SHA256SUMS"
ENV_VAR = "NNLITE_DATA_DIR"

_PACKAGED_DIR = Path(__file__).resolve().parent / "data"
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # 1 MiB: hash large files without holding them in memory twice
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_ADVICE = (
    "Reinstall nnlite (pip install --force-reinstall nnlite), or pass path= or set the "
    f"{ENV_VAR} environment variable to a directory holding the four original MNIST files "
    f"({', '.join(FILES)}) and their {CHECKSUMS}."
)


class IDXFormatError(ValueError):
    """Raised when a file is not a well-formed IDX file (bad header, wrong length, bad gzip)."""


class ChecksumError(ValueError):
    """Raised when a data file's SHA-256 differs from the one listed in ``SHA256SUMS``."""


def load_idx(file: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file, gzip-compressed or not, into a NumPy array.

    Compression is detected from the file's first two bytes, not its name. No checksum is
    verified here; ``load_data`` does that before calling this function.

    Args:
        file: path to an IDX file such as ``train-images-idx3-ubyte.gz``.

    Returns:
        A new, writable array in native byte order whose shape is the dimensions listed in the
        header and whose dtype follows the header's dtype code (``uint8`` for all MNIST files).

    Raises:
        FileNotFoundError: if ``file`` does not exist.
        IDXFormatError: if the gzip stream is corrupt, the first two bytes are not zero, the dtype
            code is unknown, ``ndim`` is 0, or the data length differs from the product of the
            dimensions times the item size. The message names the file.

    Example:
        >>> from nnlite.datasets.mnist import load_idx
        >>> labels = load_idx("nnlite/datasets/data/t10k-labels-idx1-ubyte.gz")
        >>> labels.shape, labels.dtype
        ((10000,), dtype('uint8'))
    """
    file = Path(file)
    with open(file, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            magic = stream.read(4)
            if len(magic) < 4:
                raise IDXFormatError(
                    f"{file}: truncated IDX file: {len(magic)} bytes, too short for the 4-byte "
                    "magic number"
                )
            zero0, zero1, code, ndim = magic
            if zero0 != 0 or zero1 != 0:
                raise IDXFormatError(
                    f"{file}: bad IDX magic number 0x{magic.hex()}: the first two bytes must be "
                    "zero (is this an IDX file?)"
                )
            if code not in _IDX_DTYPES:
                known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
                raise IDXFormatError(
                    f"{file}: unknown IDX dtype code 0x{code:02X} in magic number 0x{magic.hex()};"
                    f" expected one of {known}"
                )
            if ndim == 0:
                raise IDXFormatError(f"{file}: IDX header declares 0 dimensions; expected >= 1")
            header = stream.read(4 * ndim)
            if len(header) < 4 * ndim:
                raise IDXFormatError(
                    f"{file}: truncated IDX header: expected {ndim} dimension sizes "
                    f"({4 * ndim} bytes), found {len(header)} bytes"
                )
            dims = tuple(int(d) for d in np.frombuffer(header, dtype=">u4"))
            # Read what is really there rather than what the header claims, so a corrupt header
            # cannot make us allocate a huge buffer before the length check below.
            payload = stream.read()
        except (OSError, EOFError, zlib.error) as exc:
            raise IDXFormatError(f"{file}: corrupt gzip stream: {exc}") from exc
    dtype = _IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    if len(payload) != expected:
        problem = "truncated" if len(payload) < expected else "has trailing bytes"
        raise IDXFormatError(
            f"{file}: IDX data {problem}: header shape {dims} of {dtype.name} needs {expected} "
            f"bytes, found {len(payload)}"
        )
    # astype copies: the result is writable and in native byte order.
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def load_data(
    path: str | os.PathLike | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load the MNIST dataset, in the layout of ``keras.datasets.mnist.load_data()``.

    The directory is, in order of precedence: ``path``; the ``NNLITE_DATA_DIR`` environment
    variable, if set and non-empty; the ``data/`` directory shipped inside nnlite. It must hold
    the four original ``.gz`` files. Each file's SHA-256 is checked against the directory's own
    ``SHA256SUMS``; where that file is absent, or does not list a file, the packaged
    ``SHA256SUMS`` (the checksums of the official MNIST files) is used. Nothing is downloaded.

    Parsed arrays are cached in-process (keyed by the directory and the files' size and mtime),
    so later calls skip hashing and decompression. Every call returns fresh copies: mutating the
    arrays it returns never changes what the next call returns.

    Args:
        path: directory holding the MNIST files. Unlike Keras's ``path`` (a cache file name under
            ``~/.keras/datasets``), this is a directory, and ``None`` means "use the default".

    Returns:
        ``((x_train, y_train), (x_test, y_test))``, all ``uint8``:

        - ``x_train``: ``(60000, 28, 28)`` grayscale images, values 0..255.
        - ``y_train``: ``(60000,)`` digit labels, values 0..9.
        - ``x_test``: ``(10000, 28, 28)`` grayscale images, values 0..255.
        - ``y_test``: ``(10000,)`` digit labels, values 0..9.

    Raises:
        FileNotFoundError: if the directory or one of the four files is missing; the message
            names the path.
        NotADirectoryError: if ``path`` (or ``NNLITE_DATA_DIR``) names a file, not a directory.
        ChecksumError: (a ``ValueError``) if a file's SHA-256 differs from ``SHA256SUMS``; the
            message names the file, the expected and the actual hash, and what to do.
        IDXFormatError: (a ``ValueError``) if a file passes its checksum but is not a valid
            image or label IDX file, or if image and label counts disagree.
        ValueError: if a ``SHA256SUMS`` file has a malformed line.

    Example:
        >>> from nnlite.datasets import mnist
        >>> (x_train, y_train), (x_test, y_test) = mnist.load_data()
        >>> x_train.shape, y_train.shape, x_test.shape, y_test.shape
        ((60000, 28, 28), (60000,), (10000, 28, 28), (10000,))
        >>> x_train = x_train.reshape(-1, 784).astype("float32") / 255.0  # inputs for Dense
    """
    directory = _resolve_dir(path)
    stamp = []
    for name in (*FILES, CHECKSUMS):
        try:
            st = (directory / name).stat()
        except FileNotFoundError:
            if name == CHECKSUMS:
                continue  # optional: fall back to the packaged checksums
            raise FileNotFoundError(
                f"MNIST file not found: {directory / name}. {_ADVICE}"
            ) from None
        stamp.append((name, st.st_size, st.st_mtime_ns))
    arrays = _load_cached(str(directory), tuple(stamp))
    (x_train, y_train), (x_test, y_test) = arrays
    return (x_train.copy(), y_train.copy()), (x_test.copy(), y_test.copy())


def load_scaled(limit: int | None = None, dtype="float32", flatten: bool = False,
                path: str | os.PathLike | None = None):
    """:func:`load_data` with pixels scaled to [0, 1] in ``dtype``, ready for training.

    Args:
        limit: keep only the first ``limit`` training and ``limit`` test images (quick runs).
        dtype: float type of the images.
        flatten: images as rows of 784 pixels instead of 28x28.
        path: as in :func:`load_data`.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``, labels uint8 as :func:`load_data`.
    """
    (x_train, y_train), (x_test, y_test) = load_data(path)
    if limit is not None:
        x_train, y_train, x_test, y_test = (
            x_train[:limit], y_train[:limit], x_test[:limit], y_test[:limit]
        )
    scale = np.asarray(255, dtype)
    if flatten:
        x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    return (x_train.astype(dtype) / scale, y_train), (x_test.astype(dtype) / scale, y_test)


def _resolve_dir(path: str | os.PathLike | None) -> Path:
    """Pick the data directory: ``path``, else ``$NNLITE_DATA_DIR``, else the packaged one."""
    if path is not None:
        source, directory = "path", Path(path)
    elif os.environ.get(ENV_VAR):
        source, directory = ENV_VAR, Path(os.environ[ENV_VAR])
    else:
        source, directory = "packaged data directory", _PACKAGED_DIR
    directory = directory.expanduser().resolve()
    if not directory.exists():
        raise FileNotFoundError(
            f"MNIST data directory not found ({source}): {directory}. {_ADVICE}"
        )
    if not directory.is_dir():
        raise NotADirectoryError(
            f"MNIST {source} must be a directory holding the MNIST files, got a file: "
            f"{directory}. {_ADVICE}"
        )
    return directory


@functools.lru_cache(maxsize=2)  # two full copies of MNIST (~110 MB) at most
def _load_cached(
    directory: str, stamp: tuple[tuple[str, int, int], ...]
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Verify and parse the four files of ``directory``; ``stamp`` only keys the cache."""
    del stamp  # part of the cache key: a file rewritten on disk is read again
    folder = Path(directory)
    # name -> (digest, the SHA256SUMS it came from); the directory's own entries win.
    expected = {}
    for sums_file in (_PACKAGED_DIR / CHECKSUMS, folder / CHECKSUMS):
        if sums_file.is_file():
            expected.update({n: (d, sums_file) for n, d in _read_checksums(sums_file).items()})

    arrays = {}
    for name in FILES:
        digest, source = expected[name]
        _verify(folder / name, digest, source)
        arrays[name] = load_idx(folder / name)

    pairs = []
    for images_name, labels_name in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        images, labels = arrays[images_name], arrays[labels_name]
        _check_layout(folder / images_name, images, ndim=3, tail=(28, 28))
        _check_layout(folder / labels_name, labels, ndim=1, tail=())
        if len(images) != len(labels):
            raise IDXFormatError(
                f"{folder / images_name} holds {len(images)} images but {folder / labels_name} "
                f"holds {len(labels)} labels"
            )
        images.flags.writeable = False  # the cached originals; callers only ever get copies
        labels.flags.writeable = False
        pairs.append((images, labels))
    return pairs[0], pairs[1]


def _check_layout(file: Path, array: np.ndarray, ndim: int, tail: tuple[int, ...]) -> None:
    """Raise ``IDXFormatError`` unless ``array`` is uint8 of shape ``(N, *tail)``."""
    if array.dtype != np.uint8 or array.ndim != ndim or array.shape[1:] != tail:
        want = "(N, " + ", ".join(map(str, tail)) + ")" if tail else "(N,)"
        raise IDXFormatError(
            f"{file}: expected uint8 data of shape {want}, got {array.dtype} {array.shape}"
        )


def _read_checksums(sums_file: Path) -> dict[str, str]:
    """Parse ``sha256sum`` output: ``<64 hex digits> <space> <space or *><file name>``."""
    checksums = {}
    with open(sums_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            digest, _, name = line.partition(" ")
            name = name.strip().lstrip("*")
            if len(digest) != 64 or not name or not all(c in string.hexdigits for c in digest):
                raise ValueError(
                    f"{sums_file}, line {lineno}: expected '<sha256 hex> <file name>', got {line!r}"
                )
            checksums[Path(name).name] = digest.lower()
    return checksums


def _sha256(file: Path) -> str:
    """Hex SHA-256 of ``file``, read in chunks."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(file: Path, expected: str, source: Path) -> None:
    """Raise ``ChecksumError`` unless ``file`` hashes to ``expected`` (listed in ``source``)."""
    actual = _sha256(file)
    if actual != expected:
        raise ChecksumError(
            f"MNIST file {file} is corrupt or not the original: its SHA-256 is {actual}, "
            f"expected {expected} (from {source}). {_ADVICE}"
        )
