"""Tests for nnlite.datasets.mnist: the packaged data, checksums, directory lookup, IDX parsing."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from nnlite.datasets import mnist
from nnlite.datasets.mnist import ChecksumError, IDXFormatError, load_idx

PACKAGED = Path(mnist.__file__).parent / "data"

# Known facts about the official MNIST files (computed once from them and matching the published
# class counts); a different or reordered dataset fails these.
TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FIRST_TRAIN_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
FIRST_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
TRAIN_PIXEL_SUM = 1567298545
TEST_PIXEL_SUM = 264923200
FIRST_TRAIN_IMAGE_SUM = 27525
FIRST_TEST_IMAGE_SUM = 18454
FIRST_TRAIN_IMAGE_ROW_14 = [0] * 13 + [81, 240, 253, 253, 119, 25] + [0] * 9


@pytest.fixture(scope="module")
def data():
    # Explicit path: module fixtures run before the function-scoped env cleanup below.
    return mnist.load_data(path=PACKAGED)


@pytest.fixture(autouse=True)
def _no_env_dir(monkeypatch):
    """Tests start from the default lookup, whatever the developer's environment says."""
    monkeypatch.delenv(mnist.ENV_VAR, raising=False)


def _copy_dataset(dest: Path, with_sums: bool = True) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in mnist.FILES:
        shutil.copyfile(PACKAGED / name, dest / name)
    if with_sums:
        shutil.copyfile(PACKAGED / mnist.CHECKSUMS, dest / mnist.CHECKSUMS)
    return dest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _idx_bytes(array: np.ndarray, code: int = 0x08, zeros: bytes = b"\x00\x00") -> bytes:
    """Serialise ``array`` as IDX: two zero bytes, dtype code, ndim, big-endian dims, data."""
    big = array.astype(array.dtype.newbyteorder(">"))
    header = zeros + bytes([code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + big.tobytes()


def _write_gz(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload))
    return path


def _write_sums(directory: Path) -> None:
    lines = [f"{_sha256(directory / name)}  {name}\n" for name in mnist.FILES]
    (directory / mnist.CHECKSUMS).write_text("".join(lines), encoding="utf-8")


def _write_small_dataset(directory: Path, n_train: int = 5, n_test: int = 3) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        mnist.TRAIN_IMAGES: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        mnist.TRAIN_LABELS: rng.integers(0, 10, n_train, dtype=np.uint8),
        mnist.TEST_IMAGES: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        mnist.TEST_LABELS: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        _write_gz(directory / name, _idx_bytes(array))
    _write_sums(directory)
    return arrays


# --- the packaged dataset ------------------------------------------------------------------------


def test_shapes_and_dtypes(data):
    (x_train, y_train), (x_test, y_test) = data
    assert x_train.shape == (60000, 28, 28)
    assert y_train.shape == (60000,)
    assert x_test.shape == (10000, 28, 28)
    assert y_test.shape == (10000,)
    for array in (x_train, y_train, x_test, y_test):
        assert array.dtype == np.uint8
        assert array.flags.c_contiguous


def test_value_ranges_and_classes(data):
    (x_train, y_train), (x_test, y_test) = data
    for x in (x_train, x_test):
        assert x.min() == 0
        assert x.max() == 255
    for y in (y_train, y_test):
        assert set(np.unique(y).tolist()) == set(range(10))


def test_label_counts(data):
    (_, y_train), (_, y_test) = data
    assert np.bincount(y_train, minlength=10).tolist() == TRAIN_LABEL_COUNTS
    assert np.bincount(y_test, minlength=10).tolist() == TEST_LABEL_COUNTS
    assert np.count_nonzero(y_train == 0) == 5923
    assert np.count_nonzero(y_test == 0) == 980


def test_first_labels(data):
    (_, y_train), (_, y_test) = data
    assert y_train[:10].tolist() == FIRST_TRAIN_LABELS
    assert y_test[:10].tolist() == FIRST_TEST_LABELS


def test_pixel_checksums(data):
    (x_train, _), (x_test, _) = data
    assert int(x_train.sum(dtype=np.int64)) == TRAIN_PIXEL_SUM
    assert int(x_test.sum(dtype=np.int64)) == TEST_PIXEL_SUM
    assert int(x_train[0].sum(dtype=np.int64)) == FIRST_TRAIN_IMAGE_SUM
    assert int(x_test[0].sum(dtype=np.int64)) == FIRST_TEST_IMAGE_SUM
    assert x_train[0, 14].tolist() == FIRST_TRAIN_IMAGE_ROW_14


def test_returns_independent_writable_copies():
    (x_train, y_train), (x_test, y_test) = mnist.load_data()
    for array in (x_train, y_train, x_test, y_test):
        assert array.flags.writeable
    x_train[0] = 7
    y_train[:] = 0
    x_test += 1
    y_test[0] = 200

    (x_train2, y_train2), (x_test2, y_test2) = mnist.load_data()
    assert not np.shares_memory(x_train, x_train2)
    assert int(x_train2[0].sum(dtype=np.int64)) == FIRST_TRAIN_IMAGE_SUM
    assert y_train2[:10].tolist() == FIRST_TRAIN_LABELS
    assert int(x_test2.sum(dtype=np.int64)) == TEST_PIXEL_SUM
    assert y_test2[0] == FIRST_TEST_LABELS[0]


def test_packaged_checksums_match_packaged_files():
    sums = mnist._read_checksums(PACKAGED / mnist.CHECKSUMS)
    assert sorted(sums) == sorted(mnist.FILES)
    for name, digest in sums.items():
        assert _sha256(PACKAGED / name) == digest


def test_load_idx_on_packaged_labels():
    labels = load_idx(PACKAGED / mnist.TEST_LABELS)
    assert labels.shape == (10000,)
    assert labels.dtype == np.uint8
    assert labels[:10].tolist() == FIRST_TEST_LABELS


# --- directory resolution ------------------------------------------------------------------------


def test_path_argument(tmp_path, data):
    directory = _copy_dataset(tmp_path / "mnist")
    (x_train, y_train), (x_test, y_test) = mnist.load_data(path=directory)
    np.testing.assert_array_equal(x_train, data[0][0])
    np.testing.assert_array_equal(y_test, data[1][1])
    # A str works as well as a Path.
    (_, y_train_str), _ = mnist.load_data(str(directory))
    np.testing.assert_array_equal(y_train_str, y_train)


def test_env_var_is_honoured(tmp_path, monkeypatch):
    small = _write_small_dataset(tmp_path / "small")
    monkeypatch.setenv(mnist.ENV_VAR, str(tmp_path / "small"))
    (x_train, y_train), (x_test, y_test) = mnist.load_data()
    np.testing.assert_array_equal(x_train, small[mnist.TRAIN_IMAGES])
    np.testing.assert_array_equal(y_train, small[mnist.TRAIN_LABELS])
    np.testing.assert_array_equal(x_test, small[mnist.TEST_IMAGES])
    np.testing.assert_array_equal(y_test, small[mnist.TEST_LABELS])


def test_path_argument_beats_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(mnist.ENV_VAR, str(tmp_path / "does-not-exist"))
    small = _write_small_dataset(tmp_path / "small")
    (_, y_train), _ = mnist.load_data(path=tmp_path / "small")
    np.testing.assert_array_equal(y_train, small[mnist.TRAIN_LABELS])


def test_empty_env_var_means_packaged_data(monkeypatch):
    monkeypatch.setenv(mnist.ENV_VAR, "")
    (_, y_train), _ = mnist.load_data()
    assert y_train.shape == (60000,)


def test_env_var_pointing_nowhere_names_it(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(mnist.ENV_VAR, str(missing))
    with pytest.raises(FileNotFoundError, match="NNLITE_DATA_DIR") as info:
        mnist.load_data()
    assert str(missing) in str(info.value)


def test_path_that_is_a_file_is_rejected(tmp_path):
    file = tmp_path / "mnist.npz"
    file.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="mnist.npz"):
        mnist.load_data(path=file)


def test_missing_sums_falls_back_to_packaged_checksums(tmp_path, data):
    directory = _copy_dataset(tmp_path / "nosums", with_sums=False)
    (_, y_train), _ = mnist.load_data(path=directory)
    np.testing.assert_array_equal(y_train, data[0][1])

    # ...and the packaged checksums are really enforced there.
    _write_small_dataset(tmp_path / "other")
    shutil.copyfile(tmp_path / "other" / mnist.TEST_LABELS, directory / mnist.TEST_LABELS)
    with pytest.raises(ChecksumError, match=mnist.TEST_LABELS) as info:
        mnist.load_data(path=directory)
    assert str(PACKAGED / mnist.CHECKSUMS) in str(info.value)


# --- corrupt and missing files -------------------------------------------------------------------


def test_checksum_mismatch_names_file_and_hashes(tmp_path):
    directory = _copy_dataset(tmp_path / "corrupt")
    victim = directory / mnist.TRAIN_LABELS
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    victim.write_bytes(bytes(blob))
    expected = mnist._read_checksums(PACKAGED / mnist.CHECKSUMS)[mnist.TRAIN_LABELS]
    actual = _sha256(victim)

    with pytest.raises(ChecksumError) as info:
        mnist.load_data(path=directory)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(victim) in message
    assert expected in message
    assert actual in message
    assert "Reinstall nnlite" in message
    assert "NNLITE_DATA_DIR" in message
    assert "path=" in message


def test_corrupt_file_is_not_cached_as_good(tmp_path):
    directory = _copy_dataset(tmp_path / "fixme")
    victim = directory / mnist.TEST_LABELS
    good = victim.read_bytes()
    victim.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ChecksumError, match=mnist.TEST_LABELS):
        mnist.load_data(path=directory)
    victim.write_bytes(good)
    _, (_, y_test) = mnist.load_data(path=directory)
    assert y_test[:10].tolist() == FIRST_TEST_LABELS


def test_missing_file_names_file(tmp_path):
    directory = _copy_dataset(tmp_path / "partial")
    (directory / mnist.TEST_IMAGES).unlink()
    with pytest.raises(FileNotFoundError) as info:
        mnist.load_data(path=directory)
    message = str(info.value)
    assert str(directory / mnist.TEST_IMAGES) in message
    assert "NNLITE_DATA_DIR" in message


def test_malformed_sums_line_is_reported(tmp_path):
    directory = _copy_dataset(tmp_path / "badsums")
    (directory / mnist.CHECKSUMS).write_text("not-a-hash  train-images-idx3-ubyte.gz\n")
    with pytest.raises(ValueError, match=r"SHA256SUMS, line 1"):
        mnist.load_data(path=directory)


def test_own_checksums_but_bad_idx_names_file(tmp_path):
    directory = tmp_path / "synthetic"
    _write_small_dataset(directory)
    labels = np.arange(5, dtype=np.uint8)
    _write_gz(directory / mnist.TRAIN_LABELS, _idx_bytes(labels, zeros=b"\x12\x34"))
    _write_sums(directory)  # the checksum passes; the parser must still catch it
    with pytest.raises(IDXFormatError, match=mnist.TRAIN_LABELS):
        mnist.load_data(path=directory)


def test_image_label_count_mismatch(tmp_path):
    directory = tmp_path / "mismatch"
    _write_small_dataset(directory, n_train=5)
    _write_gz(directory / mnist.TRAIN_LABELS, _idx_bytes(np.zeros(4, dtype=np.uint8)))
    _write_sums(directory)
    with pytest.raises(IDXFormatError, match="5 images but .* 4 labels"):
        mnist.load_data(path=directory)


def test_wrong_image_shape_is_rejected(tmp_path):
    directory = tmp_path / "shape"
    _write_small_dataset(directory)
    _write_gz(directory / mnist.TEST_IMAGES, _idx_bytes(np.zeros((3, 27, 28), dtype=np.uint8)))
    _write_sums(directory)
    with pytest.raises(IDXFormatError, match=mnist.TEST_IMAGES):
        mnist.load_data(path=directory)


# --- the IDX parser on synthetic files -----------------------------------------------------------


@pytest.mark.parametrize(
    "code, dtype",
    [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
     (0x0D, np.float32), (0x0E, np.float64)],
)  # fmt: skip
def test_load_idx_round_trip(tmp_path, code, dtype):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    file = _write_gz(tmp_path / "x.gz", _idx_bytes(array, code=code))
    out = load_idx(file)
    assert out.shape == (2, 3, 4)
    assert out.dtype == np.dtype(dtype)
    assert out.dtype.isnative
    assert out.flags.writeable
    np.testing.assert_array_equal(out, array)


def test_load_idx_reads_uncompressed_files(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    file = tmp_path / "plain-idx2-ubyte"
    file.write_bytes(_idx_bytes(array))
    np.testing.assert_array_equal(load_idx(file), array)


def test_load_idx_rejects_bad_magic(tmp_path):
    file = _write_gz(tmp_path / "badmagic.gz", _idx_bytes(np.zeros(4, np.uint8), zeros=b"\x01\x00"))
    with pytest.raises(IDXFormatError, match=r"badmagic\.gz.*magic number 0x01000801"):
        load_idx(file)


def test_load_idx_rejects_unknown_dtype_code(tmp_path):
    file = _write_gz(tmp_path / "badcode.gz", _idx_bytes(np.zeros(4, np.uint8), code=0x07))
    with pytest.raises(IDXFormatError, match=r"badcode\.gz.*dtype code 0x07"):
        load_idx(file)


def test_load_idx_rejects_zero_dimensions(tmp_path):
    file = _write_gz(tmp_path / "nodims.gz", b"\x00\x00\x08\x00")
    with pytest.raises(IDXFormatError, match=r"nodims\.gz.*0 dimensions"):
        load_idx(file)


def test_load_idx_rejects_truncated_data(tmp_path):
    payload = _idx_bytes(np.zeros((3, 28, 28), np.uint8))
    file = _write_gz(tmp_path / "short.gz", payload[:-1])
    with pytest.raises(IDXFormatError, match=r"short\.gz.*truncated.*needs 2352 bytes, found 2351"):
        load_idx(file)


def test_load_idx_rejects_trailing_bytes(tmp_path):
    file = _write_gz(tmp_path / "long.gz", _idx_bytes(np.zeros(5, np.uint8)) + b"\x00")
    with pytest.raises(IDXFormatError, match=r"long\.gz.*trailing bytes"):
        load_idx(file)


def test_load_idx_rejects_truncated_header(tmp_path):
    payload = _idx_bytes(np.zeros((2, 2), np.uint8))
    for cut, what in [(3, "magic number"), (9, "header")]:
        file = _write_gz(tmp_path / f"cut{cut}.gz", payload[:cut])
        with pytest.raises(IDXFormatError, match=rf"cut{cut}\.gz.*truncated.*{what}"):
            load_idx(file)


def test_load_idx_rejects_truncated_gzip_stream(tmp_path):
    blob = gzip.compress(_idx_bytes(np.arange(1000, dtype=np.int32)))
    file = tmp_path / "halfgz.gz"
    file.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(IDXFormatError, match=r"halfgz\.gz.*corrupt gzip"):
        load_idx(file)


def test_load_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.gz"):
        load_idx(tmp_path / "absent.gz")


def test_load_scaled_is_load_data_over_255():
    (x, y), (xt, yt) = mnist.load_scaled(limit=300, dtype="float64", flatten=True)
    (x0, y0), (xt0, yt0) = mnist.load_data()
    assert x.shape == (300, 784) and xt.shape == (300, 784) and x.dtype == np.float64
    np.testing.assert_array_equal(x, x0[:300].reshape(300, -1) / 255.0)
    np.testing.assert_array_equal(xt, xt0[:300].reshape(300, -1) / 255.0)
    np.testing.assert_array_equal(y, y0[:300])
    (x2, _), _ = mnist.load_scaled(limit=5)
    assert x2.shape == (5, 28, 28) and x2.dtype == np.float32 and 0 <= x2.min() <= x2.max() <= 1
