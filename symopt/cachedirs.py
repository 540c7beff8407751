"""Where compiled kernels and generated user modules are cached, and what happens when no folder is writable.

Two caches hold compiled work between processes:

* numba's disk cache (``cache=True``) of the kernels in ``symopt.generated`` and the
  small helpers of :mod:`symopt.runtime.layout`.  numba writes it next to the source
  (``__pycache__``) or, when that is read-only (a system-wide or read-only install), in
  its user-wide folder (``~/.cache/numba``); with neither writable, numba refuses to
  decorate the functions at all (``RuntimeError: cannot cache function ...``), so
  ``import symopt`` would fail.  :func:`configure_numba_cache` runs first thing in
  ``import symopt``: it asks numba itself whether it can cache a function of those
  files; if not, it points numba's cache (``numba.config.CACHE_DIR``, the setting
  behind ``NUMBA_CACHE_DIR``) at :func:`fallback_cache_dir` ``/numba``, and if there is
  no such folder either it turns numba's disk cache off for symopt's modules
  (generated modules are then compiled from their text with ``cache=False``).
* the user rule modules of :mod:`symopt.codegen.emit` (``$SYMOPT_CACHE_DIR``), which
  fall back to the same private folder, then to memory.

Whatever falls back, one :class:`CacheWarning` per process names the folders that could
not be written and where things go instead (:func:`warn_fallback`: one per destination).
This module imports neither SymPy nor the code generator.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import stat
import sys
import tempfile
import threading
import warnings
from pathlib import Path

__all__ = ["CacheWarning", "fallback_cache_dir", "warn_fallback", "configure_numba_cache", "numba_disk_cache"]

#: The numba decorator as the templates write it, and its in-memory form.
CACHED_NJIT = "@numba.njit(cache=True"
UNCACHED_NJIT = "@numba.njit(cache=False"

_PACKAGE = Path(__file__).resolve().parent


class CacheWarning(UserWarning):
    """A cache folder could not be used; a fallback was taken."""


def fallback_cache_dir() -> Path | None:
    """A private per-user folder under the system temporary folder, or None if unsafe/unusable.

    The folder must be a real directory (not a symlink) owned by this user and not
    writable by group or others: a shared ``/tmp`` must not let another user plant
    modules that this process would import.
    """
    uid = os.getuid() if hasattr(os, "getuid") else None
    try:
        path = Path(tempfile.gettempdir()) / f"symopt-cache-{uid if uid is not None else 'user'}"
        path.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:  # gettempdir raises FileNotFoundError when no temporary folder is usable
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    if uid is not None and (st.st_uid != uid or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        return None
    return path


_warned: set = set()
_warn_lock = threading.Lock()


def warn_fallback(what: str, failures: list, used: Path | None, root: Path | None = None,
                  stacklevel: int = 3) -> None:
    """One :class:`CacheWarning` per destination and process.

    ``what``: what is cached ("user rule modules"); ``failures``: ``[(folder, OSError or text)]``
    that could not be written; ``used``: where it goes instead (None: nowhere, kept in memory);
    ``root``: the destination's key (the fallback folder itself) when ``used`` is a sub-folder of it.
    Later fallbacks to the same destination (user rule modules after numba's cache) say nothing new.
    """
    if not failures:
        return
    key = str(root if root is not None else used)
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    tried = "; ".join(f"{b} ({_reason(e)})" for b, e in failures)
    if used is not None:
        msg = f"symopt: cannot write {tried}; {what} go to {used} instead"
    else:
        msg = (f"symopt: no writable cache folder ({tried}); {what} are kept in memory and compiled in every "
               f"process (set SYMOPT_CACHE_DIR and NUMBA_CACHE_DIR to a writable folder)")
    warnings.warn(msg, CacheWarning, stacklevel=stacklevel)


def _reason(e) -> str:
    if isinstance(e, OSError):
        return f"{type(e).__name__}: {e.strerror or e}"
    return str(e)


# --------------------------------------------------------------------------- numba's disk cache
#: "disk" (numba's own folders), "fallback" (the private folder) or "off"; None before configuration.
_numba_mode: str | None = None


def numba_disk_cache() -> bool:
    """Whether symopt's ``cache=True`` kernels may use numba's disk cache in this process."""
    return _numba_mode != "off"


def _numba_can_cache(path: Path) -> bool:
    """numba's own answer: can it cache a function defined in the file ``path``?"""
    from numba.core.caching import FunctionCache

    code = compile("def _symopt_cache_probe():\n    pass\n", str(path), "exec", dont_inherit=True)
    namespace: dict = {}
    exec(code, namespace)
    try:
        FunctionCache(namespace["_symopt_cache_probe"])
    except (RuntimeError, OSError):
        return False
    return True


def _kernel_files() -> list:
    """One file of each folder whose modules use ``cache=True`` (runtime helpers, generated kernels)."""
    return [_PACKAGE / "runtime" / "layout.py", _PACKAGE / "generated" / "__init__.py"]


def configure_numba_cache() -> str:
    """Make sure symopt's ``cache=True`` functions can be decorated (see the module doc); returns the mode."""
    global _numba_mode
    if _numba_mode is not None:
        return _numba_mode
    from numba.core import config

    files = [f for f in _kernel_files() if f.exists()]
    blocked = [f for f in files if not _numba_can_cache(f)]
    if not blocked:
        _numba_mode = "disk"
        return _numba_mode
    failures = [(f.parent / "__pycache__", "not writable, nor numba's user-wide cache folder"
                 + (f" nor NUMBA_CACHE_DIR={config.CACHE_DIR}" if config.CACHE_DIR else "")) for f in blocked]
    root = fallback_cache_dir()
    if root is not None:
        previous = config.CACHE_DIR
        config.CACHE_DIR = str(root / "numba")
        if all(_numba_can_cache(f) for f in blocked):
            _numba_mode = "fallback"
            warn_fallback("numba's compiled kernels (and user rule modules whose cache folder is not writable)",
                          failures, root / "numba", root=root, stacklevel=4)
            return _numba_mode
        config.CACHE_DIR = previous
    _numba_mode = "off"
    sys.meta_path.insert(0, _UncachedGeneratedFinder())
    warn_fallback("compiled kernels and user rule modules", failures, None, stacklevel=4)
    return _numba_mode


class _UncachedLoader(importlib.machinery.SourceFileLoader):
    """Compiles a generated module from its source with numba's disk cache off (no bytecode cache either:
    an installed ``.pyc`` holds the ``cache=True`` decorators)."""

    def get_code(self, fullname):
        source = importlib.util.decode_source(self.get_data(self.path))
        return compile(source.replace(CACHED_NJIT, UNCACHED_NJIT), self.path, "exec", dont_inherit=True)


class _UncachedGeneratedFinder(importlib.abc.MetaPathFinder):
    """Finds ``symopt.generated.*`` as usual but loads it with :class:`_UncachedLoader`."""

    def find_spec(self, fullname, path, target=None):
        if not fullname.startswith("symopt.generated."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return spec
        spec.loader = _UncachedLoader(fullname, spec.origin)
        return spec
