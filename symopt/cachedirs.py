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

A cache folder is used only when it is trusted (:func:`folder_problem`, as ssh treats
``~/.ssh``): a real folder owned by this user, not writable by group or others, below
folders that others cannot rename it in (not group/world-writable unless sticky, like
``/tmp``).  An untrusted ``SYMOPT_CACHE_DIR`` or ``NUMBA_CACHE_DIR`` is passed over
for the private folder.  Generated user modules carry an HMAC under the user's secret
key (:func:`secret_key`), so a module another user wrote is regenerated, never run.
numba's own cache files of symopt's functions are guarded by :class:`TrustedCacheLocator`:
numba unpickles its index before checking anything, so the locator picks a trusted
folder and removes files of the function there that another user could have written
or that a crash truncated, before numba reads them.

Loading a cached kernel of those files skips numba's registry refresh (:func:`_install_cached_loading`):
numba's ``Cache.load_overload`` first imports and installs every typing and lowering registry it has
(``numba.np.arraymath``, ``numba.np.linalg`` and with them ``scipy.linalg``, unicode, typed
containers...), about 0.3 s of compiler machinery on the first load of a process.  Running machine
code from the cache needs only numba's runtime (NRT) in the target context; numba's compiler
refreshes both contexts itself before it compiles anything.

Whatever falls back, one :class:`CacheWarning` per process names the folders that could
not be used and why, and where things go instead (:func:`warn_fallback`: one per
destination).  This module imports neither SymPy nor the code generator.
"""

from __future__ import annotations

import contextlib
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

__all__ = ["CacheWarning", "fallback_cache_dir", "folder_problem", "trusted_folder", "secret_key", "warn_fallback",
           "configure_numba_cache", "numba_disk_cache", "trust_sources", "TrustedCacheLocator"]

#: The numba decorator as the templates write it, and its in-memory form.
CACHED_NJIT = "@numba.njit(cache=True"
UNCACHED_NJIT = "@numba.njit(cache=False"

_PACKAGE = Path(__file__).resolve().parent


class CacheWarning(UserWarning):
    """A cache folder could not be used; a fallback was taken."""


def _uid():
    return os.getuid() if hasattr(os, "getuid") else None


def folder_problem(path) -> str | None:
    """Why ``path`` must not hold cached code (None: it may).

    The folder itself: a real directory (not a symbolic link), owned by this user, not
    writable by group or others.  Each folder above it: owned by this user or root, and
    not writable by group or others unless sticky (so nobody else can rename the folder
    away and put their own in its place).  On systems without uids nothing is checked.
    """
    uid = _uid()
    if uid is None:
        return None
    path = Path(os.path.abspath(os.fspath(path)))
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a folder"
    if st.st_uid != uid:
        return f"it is owned by uid {st.st_uid}, not by this user (uid {uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    for parent in path.parents:
        try:
            pst = os.stat(parent)
        except OSError as exc:
            return f"{parent}: {type(exc).__name__}"
        if pst.st_uid not in (uid, 0):
            return f"the folder above it, {parent}, is owned by uid {pst.st_uid}"
        if pst.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not pst.st_mode & stat.S_ISVTX:
            return f"the folder above it, {parent}, is writable by others and not sticky"
    return None


def trusted_folder(path) -> Path:
    """``path`` created if missing (mode 0700) and checked by :func:`folder_problem`;
    ``OSError`` naming the problem if it may not be used."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    problem = folder_problem(path)
    if problem is not None:
        raise PermissionError(f"untrusted: {problem}")
    return path


def fallback_cache_dir() -> Path | None:
    """A private per-user folder under the system temporary folder, or None if unsafe/unusable.

    The folder must be trusted (:func:`folder_problem`: a real directory owned by this
    user, not writable by group or others, in a folder nobody else can rename it in): a
    shared ``/tmp`` must not let another user plant modules that this process would import.
    """
    uid = _uid()
    try:
        path = Path(tempfile.gettempdir()) / f"symopt-cache-{uid if uid is not None else 'user'}"
        path.mkdir(mode=0o700, exist_ok=True)
    except OSError:  # gettempdir raises FileNotFoundError when no temporary folder is usable
        return None
    return None if folder_problem(path) is not None else path


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
        msg = f"symopt: cannot use {tried}; {what} go to {used} instead"
    else:
        msg = (f"symopt: no writable cache folder ({tried}); {what} are kept in memory and compiled in every "
               f"process (set SYMOPT_CACHE_DIR and NUMBA_CACHE_DIR to a writable folder)")
    warnings.warn(msg, CacheWarning, stacklevel=stacklevel)


def _untrusted(e) -> bool:
    """Whether ``e`` is :func:`trusted_folder`'s refusal (not a plain failure to write)."""
    return isinstance(e, PermissionError) and str(e).startswith("untrusted: ")


def _reason(e) -> str:
    if _untrusted(e):
        return str(e)[len("untrusted: "):]
    if isinstance(e, OSError):
        return f"{type(e).__name__}: {e.strerror or e}"
    return str(e)


# --------------------------------------------------------------------------- the secret key
KEY_BYTES = 32
_keys: dict = {}


def _key_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "symopt" / "cache-key"


def secret_key() -> bytes | None:
    """This user's secret key for the MACs of generated modules (None: none usable).

    Read from ``$XDG_CONFIG_HOME/symopt/cache-key`` (``~/.config/symopt/cache-key``), or
    else from the private fallback folder; created there on first use (32 random
    bytes, mode 0600, published with a hard link so no reader sees half a key).  The
    file must be a regular file of this user that nobody else can read or write, in
    a trusted folder (:func:`folder_problem`).
    """
    candidates = [_key_path()]
    fallback = fallback_cache_dir()
    if fallback is not None:
        candidates.append(fallback / "cache-key")
    for path in candidates:
        cached = _keys.get(path)
        if cached is not None:
            return cached
        try:
            key = _read_or_create_key(path)
        except OSError:
            continue
        _keys[path] = key
        return key
    return None


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        uid = _uid()
        if not stat.S_ISREG(st.st_mode) or (uid is not None and (st.st_uid != uid or st.st_mode & 0o077)):
            raise PermissionError(f"{path} is not a private file of this user")
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise OSError(f"{path} does not hold a {KEY_BYTES}-byte key")
    return key


def _read_or_create_key(path: Path) -> bytes:
    trusted_folder(path.parent)
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(fd, os.urandom(KEY_BYTES))
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process created the key meanwhile: use theirs
        except FileExistsError:
            pass
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return _read_key(path)


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


def _generated_folders() -> list:
    """The folders of the package ``symopt.generated`` (found without importing it: in a source
    checkout it is the top-level ``generated/``, installed it is inside the package)."""
    spec = importlib.util.find_spec("symopt.generated")
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []


def _kernel_files() -> list:
    """One file of each folder whose modules use ``cache=True`` (runtime helpers, generated kernels)."""
    return [_PACKAGE / "runtime" / "layout.py", *(folder / "__init__.py" for folder in _generated_folders())]


def configure_numba_cache() -> str:
    """Make sure symopt's ``cache=True`` functions can be decorated (see the module doc); returns the mode."""
    global _numba_mode
    if _numba_mode is not None:
        return _numba_mode
    from numba.core import config

    _install_locator()
    _install_cached_loading()

    files = [f for f in _kernel_files() if f.exists()]
    blocked = [f for f in files if not _numba_can_cache(f)]
    if not blocked:
        _numba_mode = "disk"
        return _numba_mode
    failures = [(f.parent / "__pycache__", "not writable or not trusted, nor numba's user-wide cache folder"
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


# --------------------------------------------------------------------------- guarding numba's cache files
#: Folders whose ``.py`` files' numba caches :class:`TrustedCacheLocator` guards: symopt's package, the
#: package ``symopt.generated``, and the user-module folders of :mod:`symopt.codegen.emit` (:func:`trust_sources`).
_guarded: set = {str(_PACKAGE)}
#: Largest numba cache file checked and kept (a kernel's object code is well below this).
MAX_NUMBA_FILE = 256 * 2**20
TrustedCacheLocator = None
#: (folder, NUMBA_CACHE_DIR) pairs that :class:`TrustedCacheLocator` found trusted and writable in this process.
_usable_folders: set = set()


def trust_sources(folder) -> None:
    """Guard numba's cache files of the modules in ``folder`` too (see :class:`TrustedCacheLocator`)."""
    _guarded.add(os.path.abspath(os.fspath(folder)))


def _is_guarded(py_file: str) -> bool:
    path = os.path.abspath(py_file)
    return any(path == g or path.startswith(g + os.sep) for g in _guarded)


def _pickle_complete(path: str, pickles: int) -> bool:
    """True when the file holds ``pickles`` complete pickle streams (parsed by :mod:`pickletools`,
    which reads opcodes and never executes or imports anything)."""
    import io
    import pickletools

    from .files import read_regular

    try:
        data = read_regular(path, MAX_NUMBA_FILE)
        stream = io.BytesIO(data)
        for _ in range(pickles):
            for _op in pickletools.genops(stream):
                pass
        return True
    except (OSError, ValueError, EOFError, IndexError, UnicodeDecodeError):
        return False


def _clean_entries(folder: str, base: str) -> None:
    """Remove numba's cache files of one function (``<base>.nbi``, ``<base>.<n>.nbc``) from ``folder``
    unless they are regular files of this user that nobody else can write and hold complete
    pickles; each removal is one :class:`CacheWarning` (numba then recompiles and writes them anew)."""
    uid = _uid()
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(base + ".")
                   and (e.name.endswith(".nbi") or e.name.endswith(".nbc"))]
    except OSError:
        return
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            why = "it is not a regular file"
        elif uid is not None and st.st_uid != uid:
            why = f"it is owned by uid {st.st_uid}"
        elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            why = "it is writable by group or others"
        elif not _pickle_complete(entry.path, 2 if entry.name.endswith(".nbi") else 1):
            why = "it is empty, truncated or corrupt"
        else:
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
        warnings.warn(f"symopt: removed numba's cache file {entry.path} ({why}); the function is compiled again "
                      f"and its cache rewritten", CacheWarning, stacklevel=2)


def _still_private(path: str) -> bool:
    """``path`` is still a real folder of this user that group and others cannot write (one ``lstat``)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    uid = _uid()
    return stat.S_ISDIR(st.st_mode) and (uid is None or (st.st_uid == uid and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)))


def _install_locator() -> None:
    """Put :class:`TrustedCacheLocator` first in numba's list of cache locators (it answers for
    symopt's own files only; numba's locators handle everything else as before)."""
    global TrustedCacheLocator
    if TrustedCacheLocator is not None:
        return
    from numba.core import caching, config
    from numba.misc.appdirs import AppDirs

    for folder in _generated_folders():
        trust_sources(folder)

    class _Locator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
        """numba's cache folder for a function of symopt's files, trusted, with its files checked.

        Candidates, in numba's order: ``NUMBA_CACHE_DIR`` (then the private folder), else the
        source's ``__pycache__``, numba's user-wide folder, the private folder.  The first that
        :func:`trusted_folder` accepts is used (an untrusted ``NUMBA_CACHE_DIR`` gets one
        :class:`CacheWarning`).  numba reads a function's files only when it loads an overload
        (before compiling one and saving it): each load first runs :meth:`check_files`
        (:func:`_install_cached_loading`), so a module's functions that are never called cost no
        reading at import.
        """

        def __init__(self, py_func, py_file, cache_path):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = cache_path
            self._base = ""   # the function's file names, "<module>.<qualname>-<line>.pyXY" (from_function)

        def check_files(self):
            """Remove the function's cache files that numba must not read (:func:`_clean_entries`)."""
            _clean_entries(self._cache_path, self._base)

        def get_cache_path(self):
            return self._cache_path

        def ensure_cache_path(self):
            trusted_folder(self._cache_path)
            tempfile.TemporaryFile(dir=self._cache_path).close()

        @classmethod
        def from_function(cls, py_func, py_file):
            if not _is_guarded(py_file) or not os.path.exists(py_file):
                return None
            sub = cls.get_suitable_cache_subpath(py_file)

            def candidates():
                # the private folder is looked for only when the folders before it fail
                if config.CACHE_DIR:
                    yield os.path.join(config.CACHE_DIR, sub)
                else:
                    yield os.path.join(os.path.dirname(py_file), "__pycache__")
                    yield os.path.join(AppDirs(appname="numba", appauthor=False).user_cache_dir, sub)
                fallback = fallback_cache_dir()
                if fallback is not None:
                    yield os.path.join(fallback, "numba", sub)

            failures = []
            for path in candidates():
                locator = cls(py_func, py_file, path)
                # A folder accepted once in this process is checked again by itself only (owner, mode: one
                # lstat), not the folders above it nor by writing a file: about 0.6 ms less a function.
                # Only this user or root can change those; saving still runs every check (numba's
                # save_overload calls ensure_cache_path).
                if (path, config.CACHE_DIR) not in _usable_folders or not _still_private(path):
                    try:
                        if config.CACHE_DIR and not failures:
                            try:
                                trusted_folder(config.CACHE_DIR)
                            except OSError as exc:
                                failures.append((f"NUMBA_CACHE_DIR={config.CACHE_DIR}", exc))
                                continue
                        locator.ensure_cache_path()
                    except OSError as exc:
                        failures.append((path, exc))
                        continue
                    _usable_folders.add((path, config.CACHE_DIR))
                told = [(f, e) for f, e in failures if config.CACHE_DIR or _untrusted(e)]
                if told:
                    warn_fallback("numba's compiled kernels", told, Path(path), stacklevel=2)
                modname = os.path.splitext(os.path.basename(py_file))[0]
                locator._base = (f"{modname}.{py_func.__qualname__}".replace("<", "").replace(">", "")
                                 + f"-{locator.get_disambiguator()}.py{sys.version_info[0]}{sys.version_info[1]}"
                                 + getattr(sys, "abiflags", ""))
                return locator
            # numba's own locators would try the same folders without these checks: refuse, as numba
            # does when no folder is writable (configure_numba_cache then turns the disk cache off).
            raise RuntimeError(f"cannot cache function {py_func.__qualname__!r}: no trusted cache folder for "
                               f"{py_file} ({'; '.join(f'{f}: {_reason(e)}' for f, e in failures)})")

    _Locator.__name__ = _Locator.__qualname__ = "TrustedCacheLocator"
    _Locator.__module__ = __name__
    TrustedCacheLocator = _Locator
    caching.CacheImpl._locator_classes.insert(0, _Locator)


def _install_cached_loading() -> None:
    """Load the cached overloads of functions that :class:`TrustedCacheLocator` locates (symopt's
    files): first :meth:`~TrustedCacheLocator.check_files` (numba unpickles the index it reads next),
    then numba's runtime only, ``rtsys.initialize`` (NRT, which the kernels link against), then
    numba's own ``_load_overload`` (index, source stamp and target checks, unpickling, linking; a
    miss returns None and numba compiles, refreshing its contexts first, and saves).  numba's
    ``load_overload`` would first run ``target_context.refresh()``: the import of all its typing and
    lowering registries, which only compilation reads.  Every other function loads as numba does."""
    from numba.core import caching
    from numba.core.runtime import rtsys

    numba_load = caching.Cache.load_overload
    if getattr(numba_load, "_symopt", False):
        return

    def load_overload(self, sig, target_context):
        locator = getattr(self._impl, "locator", None)
        if not isinstance(locator, TrustedCacheLocator):
            return numba_load(self, sig, target_context)
        locator.check_files()
        rtsys.initialize(target_context)
        with self._guard_against_spurious_io_errors():   # as numba's: None (compile) on a spurious I/O error
            return self._load_overload(sig, target_context)

    load_overload._symopt = True
    load_overload.__doc__ = numba_load.__doc__
    caching.Cache.load_overload = load_overload
