"""Sealed text files and atomic writes (generated modules, checkpoints).

* :func:`atomic_write` writes a file so that a reader sees the old or the new
  content, never a mix: a temporary file in the same folder, ``fsync``, then
  ``os.replace``.  A crash leaves the previous file and no temporary behind.
* :func:`seal` appends a last line ``# content sha256: <hex>`` holding the sha256 of
  everything above it; :func:`is_sealed` checks it, so an edited or truncated file is
  recognised.
* :func:`write_if_changed` leaves a file that already holds the text untouched (its
  timestamp too, so numba's on-disk cache of an unchanged kernel module stays valid).

This module imports neither SymPy nor the code generator: the runtime's checkpoints
use the same writer.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

__all__ = ["SEAL_PREFIX", "seal", "is_sealed", "is_intact", "atomic_write", "write_if_changed"]

SEAL_PREFIX = "# content sha256: "


def seal(text: str) -> str:
    """``text`` (ending in a newline) followed by a line with the sha256 of it."""
    if not text.endswith("\n"):
        text += "\n"
    return f"{text}{SEAL_PREFIX}{hashlib.sha256(text.encode('utf-8')).hexdigest()}\n"


def is_sealed(text: str) -> bool:
    """True when the last line of ``text`` is a seal that matches everything above it."""
    body, sep, last = text.rstrip("\n").rpartition("\n")
    if not sep or not last.startswith(SEAL_PREFIX):
        return False
    return hashlib.sha256((body + "\n").encode("utf-8")).hexdigest() == last[len(SEAL_PREFIX):].strip()


def is_intact(path) -> bool:
    """True when the file at ``path`` is readable UTF-8 text and :func:`is_sealed`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return is_sealed(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8 with ``\\n`` newlines, or bytes) to ``path`` atomically.

    The folder must exist.  The file gets the permissions of an ordinary new file
    (``0o644`` less the umask), like ``open(path, "w")`` would give it.
    """
    path = Path(os.fspath(path))
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_if_changed(path, text: str) -> bool:
    """:func:`atomic_write` unless the file already holds exactly ``text``; True if it wrote."""
    try:
        if Path(path).read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write(path, text)
    return True
