"""Writing generated modules: built-ins into ``generated/``, user rules into a cache.

Every file is written atomically (temporary file in the same folder, fsync,
``os.replace``), so a reader never sees half a module, and ends with a seal line
holding the sha256 of its content.

User rules (:func:`user_module`) go to ``$SYMOPT_CACHE_DIR`` (default
``$XDG_CACHE_HOME/symopt`` or ``~/.cache/symopt``) as real ``.py`` files, so
numba's ``cache=True`` works for them too.  A family is checked
(:func:`~symopt.rulebook.validate.check_family`) before it is rendered, and the
rendered text is audited (:func:`~symopt.codegen.audit.audit_module`: it compiles
and has only a generated module's shape) before it is written.  An ``fcntl`` lock
on ``kernels/.lock`` serializes writers; each reader reads the file once and uses
that text only if its seal and its ``INPUT_HASH`` line match the family (an edited,
truncated or older file is regenerated, never imported).  The runtime executes
exactly the text that was checked, never re-reading the file.

If the cache folder cannot be written (read-only, not a folder), the module goes to
a private per-user folder under the system temporary folder; if that fails too it
is kept in memory only (numba then compiles it in every process).  Either way one
:class:`CacheWarning` is issued per process and destination (none more if numba's
cache already fell back to the same folder: :mod:`symopt.cachedirs`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .._version import __version__
from ..cachedirs import CacheWarning, fallback_cache_dir, warn_fallback  # noqa: F401 (CacheWarning: public here too)
from ..rulebook.catalog import builtin_families
from ..rulebook.rule import Family
from .names import comment_text, module_name, string_literal
from .render import environment, input_hash, render_family

INDEX_TEMPLATE = "generated_index.py.jinja"


SEAL_PREFIX = "# content sha256: "


def seal(text: str) -> str:
    """Append a last line holding the sha256 of everything above it."""
    if not text.endswith("\n"):
        text += "\n"
    return f"{text}{SEAL_PREFIX}{hashlib.sha256(text.encode('utf-8')).hexdigest()}\n"


def _seal_ok(text: str) -> bool:
    body, sep, last = text.rstrip("\n").rpartition("\n")
    if not sep or not last.startswith(SEAL_PREFIX):
        return False
    return hashlib.sha256((body + "\n").encode("utf-8")).hexdigest() == last[len(SEAL_PREFIX):].strip()


def is_intact(path: Path) -> bool:
    """True when the file's last line is a seal that matches its content."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return _seal_ok(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644 & ~_umask())  # mkstemp makes 0600; modules are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_if_changed(path: Path, text: str) -> bool:
    """``atomic_write`` unless the file already holds exactly ``text`` (keeps its timestamp,
    so numba's on-disk cache of an unchanged kernel module stays valid)."""
    try:
        if Path(path).read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write(path, text)
    return True


def render_index(names_to_modules: list) -> str:
    digest = hashlib.sha256(repr(names_to_modules).encode() + __version__.encode()).hexdigest()
    header = {"version": __version__, "rule": "index of built-in rules", "source": "symopt.rulebook.catalog",
              "template": INDEX_TEMPLATE, "input_hash": digest}
    rules = [(string_literal(n), string_literal(m)) for n, m in names_to_modules]
    return environment().get_template(INDEX_TEMPLATE).render(header=header, rules=rules)


def generate_builtins(out_dir: Path, names: list | None = None) -> list:
    """Render every built-in rule (or ``names``) into ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    fams = builtin_families()
    selected = list(fams) if names is None else list(names)
    written = []
    index = []
    for name in fams:
        mod = module_name(name)
        index.append((name, mod))
        if name not in selected:
            continue
        path = out_dir / f"{mod}.py"
        write_if_changed(path, seal(render_family(fams[name], source_label=f"{fams[name].source}")))
        written.append(path)
    if names is None:
        path = out_dir / "__init__.py"
        write_if_changed(path, seal(render_index(index)))
        written.append(path)
        from .generate_nn import generate_nn  # losses and activations: nn_*.py, not in the RULES index

        written += generate_nn(out_dir)
    return written


def cache_dir() -> Path:
    """The user kernel cache: ``$SYMOPT_CACHE_DIR`` or ``<user cache home>/symopt``."""
    env = os.environ.get("SYMOPT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "symopt"


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: rely on atomic rename alone
            fcntl = None
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _header_hash(text: str) -> str | None:
    for line in text.splitlines():  # after the docstring, whose length depends on the rule's doc
        if line.startswith("INPUT_HASH = "):
            return line.split("=", 1)[1].strip().strip("'\"")
    return None


def read_header_hash(path: Path) -> str | None:
    """The ``INPUT_HASH`` recorded in a generated module, or None if unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("INPUT_HASH = "):
                    return line.split("=", 1)[1].strip().strip("'\"")
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _verified_text(path: Path, digest: str) -> str | None:
    """The file's text if it is sealed, intact, generated from inputs with hash ``digest`` and
    passes the audit; None otherwise (the caller then regenerates it)."""
    from .audit import AuditError, audit_module

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not _seal_ok(text) or _header_hash(text) != digest:
        return None
    try:
        audit_module(text, str(path))
    except AuditError:
        return None
    return text


@dataclass(frozen=True)
class UserModule:
    """A user rule's generated module: its checked text, input hash and file (None: in memory)."""

    path: Path | None
    digest: str
    text: str
    name: str


def user_module_path(family: Family, directory: Path | None = None) -> tuple[Path, str]:
    """Path (in the configured cache) and expected input hash of the module for a user rule."""
    digest = input_hash(family)
    directory = cache_dir() if directory is None else Path(directory)
    return directory / "kernels" / f"{module_name(family.name)}_{digest[:16]}.py", digest


def render_user_module(family: Family) -> str:
    """Checked, sealed and audited source text of a user family's module."""
    from ..rulebook.rule import check_family
    from .audit import audit_module

    check_family(family)
    text = seal(render_family(family, source_label=f"user rule {comment_text(family.name)}"))
    audit_module(text, f"<user rule {module_name(family.name)}>")
    return text


def _warn_once(failures: list, used: Path | None, root: Path | None = None, what: str = "user rule modules") -> None:
    """One :class:`CacheWarning` per destination (see :func:`symopt.cachedirs.warn_fallback`)."""
    failures = [(f"the kernel cache folder {b}", e) for b, e in failures]
    warn_fallback(what, failures, used, root=root, stacklevel=5)


def user_module(family: Family, directory: Path | None = None) -> UserModule:
    """The checked module text of a user family, from the cache or freshly generated into it.

    ``directory`` overrides :func:`cache_dir`.  Tries that folder, then
    :func:`fallback_cache_dir`, then keeps the module in memory (see the module doc).
    Raises :class:`~symopt.rulebook.rule.RuleError` for a malformed family.
    """
    from ..rulebook.rule import check_family

    check_family(family)
    digest = input_hash(family)
    stem = f"{module_name(family.name)}_{digest[:16]}"
    primary = cache_dir() if directory is None else Path(directory)
    failures: list = []
    text = None
    for base in _candidate_dirs(primary):
        path = base / "kernels" / f"{stem}.py"
        found = _verified_text(path, digest)
        if found is None:
            if text is None:
                text = render_user_module(family)
            try:
                with _locked(path.parent / ".lock"):
                    found = _verified_text(path, digest)  # another process may have just written it
                    if found is None:
                        atomic_write(path, text)
                        found = text
            except OSError as exc:
                failures.append((base, exc))
                continue
        _warn_once(failures, path.parent, root=base)
        return UserModule(path, digest, found, stem)
    if text is None:
        text = render_user_module(family)
    _warn_once(failures, None)
    return UserModule(None, digest, text, stem)


def _candidate_dirs(primary: Path):
    """The configured cache folder, then (only if asked for) the per-user fallback folder."""
    yield primary
    fallback = fallback_cache_dir()
    if fallback is not None and fallback != primary:
        yield fallback


def ensure_user_module(family: Family, directory: Path | None = None) -> tuple[Path | None, str]:
    """Generate the user rule's module into the cache unless an intact copy is there.

    Returns ``(path, input hash)``; ``path`` is None when no cache folder was writable.
    """
    um = user_module(family, directory)
    return um.path, um.digest
