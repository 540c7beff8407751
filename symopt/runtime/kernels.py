"""Finding the generated module of a rule, without SymPy for built-ins.

Built-in rules live in the checked-in package ``symopt.generated`` (the
``generated/`` folder), indexed by ``symopt.generated.RULES``.  A user
:class:`~symopt.rulebook.rule.Rule` (or ``Family``) is checked, generated on first
use into the user cache (see :mod:`symopt.codegen.emit`) and executed from the
exact text that was verified (seal, input hash, audit) -- compiled with the cache
file's path as its file name, so numba's on-disk cache works for it as well; the
file is never imported by path after the check.  When no cache folder is writable
the module runs from memory with numba's disk cache turned off.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types

_lock = threading.Lock()
_user_modules: dict = {}


def builtin_names() -> list:
    """Names of all built-in rules, in catalog order (reads the generated index only)."""
    from .. import generated

    return list(generated.RULES)


def load_builtin(name: str):
    """The generated module of built-in rule ``name``."""
    if not isinstance(name, str):
        raise TypeError(f"rule must be a name (str) or a symopt.Rule, got {type(name).__name__}")
    from .. import generated

    try:
        mod = generated.RULES[name]
    except KeyError:
        known = ", ".join(generated.RULES)
        raise ValueError(f"unknown rule {name!r}; built-in rules are: {known}") from None
    return importlib.import_module(f"symopt.generated.{mod}")


def _family_of(rule_or_family):
    from ..rulebook.rule import Family, Rule

    if isinstance(rule_or_family, Rule):
        return Family.of(rule_or_family)
    if isinstance(rule_or_family, Family):
        return rule_or_family
    raise TypeError(f"expected a rule name (str), a symopt.Rule or a Family, got {type(rule_or_family).__name__}")


#: The numba decorator as the template writes it; in-memory modules turn its disk cache off.
_CACHED_NJIT = "@numba.njit(cache=True"


def _execute(um):
    """A module object from a checked :class:`~symopt.codegen.emit.UserModule`."""
    mod_name = f"symopt_user_kernels.{um.name}"
    text = um.text
    if um.path is None:
        # numba can only cache functions that live in a file; keep everything else identical.
        text = text.replace(_CACHED_NJIT, "@numba.njit(cache=False")
        filename = f"<symopt user rule {um.name}>"
    else:
        filename = str(um.path)
    code = compile(text, filename, "exec", dont_inherit=True)
    mod = types.ModuleType(mod_name)
    if um.path is not None:
        mod.__file__ = filename
    sys.modules[mod_name] = mod
    try:
        exec(code, mod.__dict__)  # the generated module's own text, sealed and audited above
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    if getattr(mod, "INPUT_HASH", None) != um.digest:
        sys.modules.pop(mod_name, None)
        raise ImportError(f"generated module {filename} does not match its rule (hash mismatch)")
    return mod


def load_user(rule_or_family):
    """Check, generate (if needed) and load the module of a user Rule or Family."""
    from ..codegen.emit import user_module
    from ..codegen.render import family_hash

    family = _family_of(rule_or_family)
    digest = family_hash(family)
    with _lock:
        mod = _user_modules.get(digest)
    if mod is not None:
        return mod
    um = user_module(family)
    with _lock:
        mod = _user_modules.get(um.digest)
        if mod is None:
            mod = _execute(um)
            _user_modules[um.digest] = mod
        return mod


def load(rule):
    """Module for a built-in name or a user Rule/Family."""
    if isinstance(rule, str):
        return load_builtin(rule)
    return load_user(rule)
