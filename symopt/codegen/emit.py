"""The emit stage: rendered modules become sealed files, checked in or in the user cache.

Every file is written atomically and ends with a seal line holding the sha256 of
its content (:mod:`symopt.files`), so a reader never sees half a module and an
edited file is recognised.

* :func:`generate_builtins` writes the built-in modules into ``generated/`` (checked
  in; ``symopt generate`` calls it and a test diffs the result): one module per
  built-in optimizer family, their ``RULES`` index (``__init__.py``), and one module
  per ``symopt.nn`` loss and activation (``nn_loss_<name>.py``/``nn_act_<name>.py``,
  which the index does not list: the runtime finds them by module name).
* :func:`user_module` (a user rule) and :func:`gradient_module` (an expression of
  :func:`symopt.gradient`) go through one cache lookup, :func:`cached_module`, into
  ``$SYMOPT_CACHE_DIR`` (default ``$XDG_CACHE_HOME/symopt`` or ``~/.cache/symopt``),
  folder ``kernels/`` or ``gradients/``, as real ``.py`` files so that numba's
  ``cache=True`` works for them too.  The rendered text is audited
  (:func:`~symopt.codegen.audit.audit_module`: it compiles and has only a generated
  module's shape) before it is written, and signed: a last line holds its HMAC under
  the user's secret key (:func:`symopt.cachedirs.secret_key`).  An ``fcntl`` lock on
  the folder's ``.lock`` serializes writers; a reader reads the file once (a regular
  file, not through a symbolic link) and uses that text only if its MAC, seal and
  ``INPUT_HASH`` line match and it passes the audit again (a file written by anyone
  without the key, edited, truncated, older or from another version of the code
  generator is regenerated, never run).  The runtime executes exactly the text that
  was checked, never re-reading the file.

The checked-in modules of ``generated/`` carry a seal but no MAC: they are part of
the installed package and trusted as the package's other source files are (whoever
can write the install folder can change symopt itself); their numba cache is
guarded like the user cache's (:class:`symopt.cachedirs.TrustedCacheLocator`).

The cache folder is used only when trusted (:func:`symopt.cachedirs.folder_problem`:
owned by this user, not writable by group or others).  If it is not, or cannot be
written (read-only, not a folder), or no secret key is available, the module goes to
a private per-user folder under the system temporary folder; if that fails too it
is kept in memory only (numba then compiles it in every process).  Either way one
:class:`~symopt.cachedirs.CacheWarning` is issued per process and destination (none
more if numba's cache already fell back to the same folder: :mod:`symopt.cachedirs`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..cachedirs import fallback_cache_dir, secret_key, trust_sources, trusted_folder, warn_fallback
from ..files import MAX_TEXT_BYTES, atomic_write, is_sealed, read_regular, seal, sign, signed, write_if_changed
from ..rulebook.catalog import builtin_families
from ..rulebook.rule import Family, check_family
from .audit import AuditError, audit_module
from .names import comment_text, module_name
from .plan_gradients import plan_elementwise, plan_rowwise
from .render import (TARGETS, array_family_hash, family_hash, has_array_module, gradient_hash, nn_module_name, render_array_family,
                     render_elementwise, render_family, render_gradient, render_index, render_rowwise)

#: Module kinds of the user cache: sub-folder and what the cache warnings call them.
_CACHE_KINDS = {"rule": ("kernels", "user rule modules"), "gradient": ("gradients", "gradient modules"),
                **{f"rule-{name}": (f"kernels-{name}", f"user rule {name} modules") for name in TARGETS}}


# ----------------------------------------------------------------------------- built-in modules
def builtin_modules(names: list | None = None) -> dict:
    """``{module name: sealed text}`` of the built-in modules (see the module doc).

    With ``names``, only the optimizer families of those rules (no index, no nn modules).
    """
    fams = builtin_families()
    selected = list(fams) if names is None else list(names)
    out = {module_name(name): seal(render_family(fams[name], source_label=fams[name].source))
           for name in fams if name in selected}
    if names is None:
        out["__init__"] = seal(render_index([(name, module_name(name)) for name in fams]))
        out.update(nn_modules())
    return out


def backend_modules(target: str, names: list | None = None) -> dict:
    """``{module name: sealed text}`` of the built-in families' modules for the array backend
    ``target`` (``"torch"``, ``"jax"``: ``generated/<target>/``), with their ``RULES`` index."""
    fams = builtin_families()
    selected = list(fams) if names is None else list(names)
    fams = {name: fam for name, fam in fams.items() if has_array_module(fam)}   # others: Numba only
    out = {module_name(name): seal(render_array_family(fams[name], TARGETS[target], source_label=fams[name].source))
           for name in fams if name in selected}
    if names is None:
        out["__init__"] = seal(render_index([(name, module_name(name)) for name in fams]))
    return out


def nn_modules() -> dict:
    """``{module name: sealed text}`` for every ``symopt.nn`` loss and activation."""
    from ..rulebook.nn import activations, losses
    from ..rulebook.nn.spec import Elementwise

    out = {}
    for table in (losses.LOSSES, activations.ACTIVATIONS):
        for name, build in table.items():
            spec = build()
            text = (render_elementwise(plan_elementwise(spec)) if isinstance(spec, Elementwise)
                    else render_rowwise(plan_rowwise(spec)))
            out[nn_module_name(spec.kind, name)] = seal(text)
    return out


def generate_builtins(out_dir: Path, names: list | None = None) -> list:
    """Write :func:`builtin_modules` into ``out_dir`` and every backend's :func:`backend_modules` into
    ``out_dir/<backend>/`` (files that changed only); returns the paths."""
    out_dir = Path(out_dir)
    batches = [(out_dir, builtin_modules(names))]
    batches += [(out_dir / target, backend_modules(target, names)) for target in TARGETS]
    written = []
    for folder, modules in batches:
        folder.mkdir(parents=True, exist_ok=True)
        for mod, text in modules.items():
            path = folder / f"{mod}.py"
            write_if_changed(path, text)
            written.append(path)
    return written


# ----------------------------------------------------------------------------- the user cache
def cache_dir() -> Path:
    """The user kernel cache: ``$SYMOPT_CACHE_DIR`` or ``<user cache home>/symopt``."""
    env = os.environ.get("SYMOPT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "symopt"


@dataclass(frozen=True)
class UserModule:
    """A generated module of the user cache: its file (None: in memory), input hash, checked text
    and module name."""

    path: Path | None
    digest: str
    text: str
    name: str


def user_module(family: Family, directory: Path | None = None) -> UserModule:
    """The checked module of a user family, from the cache or freshly generated into it.

    Raises :class:`~symopt.rulebook.rule.RuleError` for a malformed family.
    """
    check_family(family)
    digest = family_hash(family)
    label = f"user rule {comment_text(family.name)}"
    return cached_module("rule", f"{module_name(family.name)}_{digest[:16]}", digest,
                         lambda: _audited(seal(render_family(family, source_label=label)),
                                          f"<user rule {module_name(family.name)}>"),
                         directory)


def user_backend_module(family: Family, target: str, directory: Path | None = None) -> UserModule:
    """The checked module of a user family for the array backend ``target`` (``"torch"``, ``"jax"``)."""
    check_family(family)
    digest = array_family_hash(family, TARGETS[target])
    label = f"user rule {comment_text(family.name)}"
    return cached_module(f"rule-{target}", f"{module_name(family.name)}_{digest[:16]}", digest,
                         lambda: _audited(seal(render_array_family(family, TARGETS[target], source_label=label)),
                                          f"<user rule {module_name(family.name)} for {target}>"),
                         directory)


def gradient_module(program, directory: Path | None = None) -> UserModule:
    """The checked module of a :class:`~symopt.codegen.plan_gradients.TermProgram`, from the cache or freshly
    generated into it."""
    digest = gradient_hash(program)
    return cached_module("gradient", f"grad_{digest[:16]}", digest,
                         lambda: _audited(seal(render_gradient(program)), "<symopt.gradient module>"), directory)


def cached_module(kind: str, stem: str, digest: str, render: Callable[[], str],
                  directory: Path | None = None) -> UserModule:
    """The module ``<cache>/<folder of kind>/<stem>.py`` whose ``INPUT_HASH`` is ``digest``.

    Reused when intact (seal, hash, audit), else written from ``render()`` (sealed, audited
    text, rendered at most once) under the folder's lock.  ``directory`` overrides
    :func:`cache_dir`; tries that folder, then :func:`~symopt.cachedirs.fallback_cache_dir`,
    then keeps the module in memory.
    """
    folder, what = _CACHE_KINDS[kind]
    primary = cache_dir() if directory is None else Path(directory)
    failures: list = []
    text = None
    key = secret_key()
    for base in _candidate_dirs(primary):
        path = base / folder / f"{stem}.py"
        try:
            if key is None:
                raise PermissionError("untrusted: no private secret key could be read or created")
            trusted_folder(base)
            trusted_folder(path.parent)
        except OSError as exc:
            failures.append((base, exc))
            continue
        found = _verified_text(path, digest, key)
        if found is None:
            if text is None:
                text = render()
            try:
                with _locked(path.parent / ".lock"):
                    found = _verified_text(path, digest, key)  # another process may have just written it
                    if found is None:
                        found = sign(text, key)
                        atomic_write(path, found)
            except OSError as exc:
                failures.append((base, exc))
                continue
        trust_sources(path.parent)
        _warn_once(failures, path.parent, root=base, what=what)
        return UserModule(path, digest, found, stem)
    if text is None:
        text = render()
    _warn_once(failures, None, what=what)
    return UserModule(None, digest, text, stem)


def _audited(text: str, label: str) -> str:
    audit_module(text, label)
    return text


def _candidate_dirs(primary: Path):
    """The configured cache folder, then (only if asked for) the per-user fallback folder."""
    yield primary
    fallback = fallback_cache_dir()
    if fallback is not None and fallback != primary:
        yield fallback


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "a") as fh:
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
        return _header_hash(read_regular(path, MAX_TEXT_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def _verified_text(path: Path, digest: str, key: bytes) -> str | None:
    """The file's text if it is a regular file signed with ``key``, sealed, generated from inputs
    with hash ``digest`` and passes the audit; None otherwise (the caller then regenerates it)."""
    try:
        text = read_regular(path, MAX_TEXT_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not signed(text, key):
        return None
    body = text[:text.rstrip("\n").rfind("\n") + 1]
    if not is_sealed(body) or _header_hash(body) != digest:
        return None
    try:
        audit_module(text, str(path))
    except AuditError:
        return None
    return text


def _warn_once(failures: list, used: Path | None, *, what: str, root: Path | None = None) -> None:
    """One :class:`~symopt.cachedirs.CacheWarning` per destination (see :func:`symopt.cachedirs.warn_fallback`)."""
    failures = [(f"the kernel cache folder {b}", e) for b, e in failures]
    warn_fallback(what, failures, used, root=root, stacklevel=6)
