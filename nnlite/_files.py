"""Writing files so that no reader ever sees half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any


@contextmanager
def atomic_write(path, mode: str = "wb", suffix: str = ".tmp", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; when the block ends without an
    error it replaces ``path`` (``os.replace``, atomic on one file system), otherwise it is
    removed and ``path`` is left as it was.

    The file gets mode 0644 (``mkstemp`` makes 0600 files; these are meant to be shared).

    Example:
        >>> with atomic_write("out/table.md", "w", encoding="utf-8") as f:  # doctest: +SKIP
        ...     f.write(text)
    """
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    fd, tmp = tempfile.mkstemp(prefix=".nnlite-", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
