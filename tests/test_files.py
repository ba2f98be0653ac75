"""nnlite._files.atomic_write: a file is replaced whole or not at all."""

import os
import stat

import pytest

from nnlite._files import atomic_write


def test_atomic_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "table.md"
    path.write_text("old")
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("new")
        assert path.read_text() == "old"  # nothing visible before the block ends
    assert path.read_text() == "new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(tmp_path) == ["table.md"]


def test_atomic_write_leaves_the_old_file_on_error(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["weights.npz"]
