"""Writing generated modules: built-ins into ``generated/``, user rules into a cache.

Every file is written atomically (temporary file in the same folder, fsync,
``os.replace``), so a reader never sees half a module.  User rules go to
``$SYMOPT_CACHE_DIR`` (default ``~/.cache/symopt``, or ``$XDG_CACHE_HOME/symopt``)
as real ``.py`` files so numba's ``cache=True`` works for them too; a lock file
serializes writers, and a cached module whose header hash does not match its
inputs is regenerated, never imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from .._version import __version__
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


def is_intact(path: Path) -> bool:
    """True when the file's last line is a seal that matches its content."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    body, sep, last = text.rstrip("\n").rpartition("\n")
    if not sep or not last.startswith(SEAL_PREFIX):
        return False
    return hashlib.sha256((body + "\n").encode("utf-8")).hexdigest() == last[len(SEAL_PREFIX):].strip()


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
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
        atomic_write(path, seal(render_family(fams[name], source_label=f"{fams[name].source}")))
        written.append(path)
    if names is None:
        path = out_dir / "__init__.py"
        atomic_write(path, seal(render_index(index)))
        written.append(path)
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

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX: rely on atomic rename alone
            pass
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                import fcntl

                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def read_header_hash(path: Path) -> str | None:
    """The ``INPUT_HASH`` recorded in a generated module, or None if unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:  # after the docstring, whose length depends on the rule's doc
                if line.startswith("INPUT_HASH = "):
                    return line.split("=", 1)[1].strip().strip("'\"")
    except (OSError, UnicodeDecodeError):
        return None
    return None


def user_module_path(family: Family, directory: Path | None = None) -> tuple[Path, str]:
    """Path and expected input hash of the cached module for a user rule."""
    digest = input_hash(family)
    directory = cache_dir() if directory is None else Path(directory)
    return directory / "kernels" / f"{module_name(family.name)}_{digest[:16]}.py", digest


def ensure_user_module(family: Family, directory: Path | None = None) -> tuple[Path, str]:
    """Generate the user rule's module into the cache unless an intact copy is there."""
    path, digest = user_module_path(family, directory)
    if read_header_hash(path) == digest and is_intact(path):
        return path, digest
    with _locked(path.parent / ".lock"):
        if read_header_hash(path) != digest or not is_intact(path):
            text = render_family(family, source_label=f"user rule {comment_text(family.name)}")
            atomic_write(path, seal(text))
    return path, digest
