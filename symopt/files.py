"""Sealed and signed text files, safe reads and atomic writes (generated modules, checkpoints).

* :func:`atomic_write` writes a file so that a reader sees the old or the new
  content, never a mix: a temporary file ``.<name>.<pid>.<random>.tmp`` in the same
  folder (created ``O_EXCL``), ``fchmod`` and ``fsync`` on its descriptor, then
  ``os.replace``.  A crash leaves the previous file; a temporary file left by a killed
  writer (its process is gone) is removed by the next write of the same file.
* :func:`read_regular` reads a file only if it is a regular file reached without
  following a symbolic link in its last component (``O_NOFOLLOW``; a FIFO, device or
  folder is refused at once, never blocked on), up to a size limit.
* :func:`seal` appends a last line ``# content sha256: <hex>`` holding the sha256 of
  everything above it; :func:`is_sealed` checks it, so an edited or truncated file is
  recognised.  A seal proves integrity, not origin: anyone can recompute it.
* :func:`sign` appends a line ``# hmac-sha256: <hex>``, a keyed MAC of everything above it
  (the key is secret to the user, :func:`symopt.cachedirs.secret_key`); :func:`signed` checks it.
  Only a process holding the key can write a file that passes :func:`signed`.
* :func:`write_if_changed` leaves a file that already holds the text untouched (its
  timestamp too, so numba's on-disk cache of an unchanged kernel module stays valid).

This module imports neither SymPy nor the code generator: the runtime's checkpoints
use the same writer.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["SEAL_PREFIX", "MAC_PREFIX", "seal", "is_sealed", "is_intact", "sign", "signed", "read_regular",
           "atomic_write", "write_if_changed"]

SEAL_PREFIX = "# content sha256: "
MAC_PREFIX = "# hmac-sha256: "
#: Largest text file the readers here accept (a generated module is at most a few hundred KB).
MAX_TEXT_BYTES = 16 * 2**20
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def seal(text: str) -> str:
    """``text`` (ending in a newline) followed by a line with the sha256 of it."""
    if not text.endswith("\n"):
        text += "\n"
    return f"{text}{SEAL_PREFIX}{hashlib.sha256(text.encode('utf-8')).hexdigest()}\n"


def is_sealed(text: str) -> bool:
    """True when the last line of ``text`` (before a :func:`sign` line, if any) is a seal that matches
    everything above it."""
    body, sep, last = text.rstrip("\n").rpartition("\n")
    if last.startswith(MAC_PREFIX):
        body, sep, last = body.rpartition("\n")
    if not sep or not last.startswith(SEAL_PREFIX):
        return False
    return hashlib.sha256((body + "\n").encode("utf-8")).hexdigest() == last[len(SEAL_PREFIX):].strip()


def is_intact(path) -> bool:
    """True when the file at ``path`` is a readable regular UTF-8 text file and :func:`is_sealed`."""
    try:
        text = read_regular(path, MAX_TEXT_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return is_sealed(text)


def _mac(body: str, key: bytes) -> str:
    return hmac.new(key, body.encode("utf-8"), hashlib.sha256).hexdigest()


def sign(text: str, key: bytes) -> str:
    """``text`` (ending in a newline) followed by a line with its HMAC-SHA256 under ``key``."""
    if not text.endswith("\n"):
        text += "\n"
    return f"{text}{MAC_PREFIX}{_mac(text, key)}\n"


def signed(text: str, key: bytes) -> bool:
    """True when the last line of ``text`` is a MAC under ``key`` of everything above it
    (compared in constant time)."""
    if not text.endswith("\n"):
        return False
    body, sep, last = text[:-1].rpartition("\n")
    if not sep or not last.startswith(MAC_PREFIX):
        return False
    return hmac.compare_digest(_mac(body + "\n", key), last[len(MAC_PREFIX):])


def read_regular(path, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``, else ``OSError``).

    Opened with ``O_NOFOLLOW`` (a symbolic link as the last component is refused) and
    ``O_NONBLOCK`` (opening a FIFO does not wait for a writer); anything but a regular
    file is refused from ``fstat`` of the open descriptor, before a byte is read.
    """
    fd = os.open(os.fspath(path), os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{os.fspath(path)} is not a regular file")
        if st.st_size > limit:
            raise OSError(f"{os.fspath(path)} is {st.st_size} bytes, more than {limit}")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise OSError(f"{os.fspath(path)} grew past {limit} bytes while being read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_orphans(path: Path) -> None:
    """Remove ``.<name>.<pid>.*.tmp`` files of ``path`` left by writers that no longer run
    (regular files of this user only; a write still in progress in a live process is kept)."""
    prefix = f".{path.name}."
    uid = os.getuid() if hasattr(os, "getuid") else None
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or (uid is not None and st.st_uid != uid):
                continue
            os.kill(int(pid), 0)  # raises ProcessLookupError when the writer is gone
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        except (OSError, OverflowError):
            continue


def atomic_write(path, data: str | bytes, mode: int | None = None) -> None:
    """Write ``data`` (text as UTF-8 with ``\\n`` newlines, or bytes) to ``path`` atomically.

    The folder must exist.  The file gets ``mode`` (default: the permissions of an
    ordinary new file, ``0o644`` less the umask), set with ``fchmod`` on the open
    descriptor, so a path swapped for a symbolic link meanwhile cannot redirect it.
    Temporary files of earlier writes whose process died are removed first.
    """
    path = Path(os.fspath(path))
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    _remove_orphans(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), (0o644 & ~_umask()) if mode is None else mode)  # mkstemp makes 0600
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_if_changed(path, text: str) -> bool:
    """:func:`atomic_write` unless the file already holds exactly ``text``; True if it wrote."""
    try:
        if read_regular(path, MAX_TEXT_BYTES).decode("utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write(path, text)
    return True
