"""Finding the generated module of a rule, without SymPy for built-ins.

Built-in rules live in the checked-in package ``symopt.generated`` (the
``generated/`` folder), indexed by ``symopt.generated.RULES``.  A user
:class:`~symopt.rulebook.rule.Rule` (or ``Family``) is generated on first use into
the user cache (see :mod:`symopt.codegen.generate`) and imported from that file,
so numba's on-disk cache works for it as well.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading

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


def load_user(rule_or_family):
    """Generate (if needed) and import the module of a user Rule or Family."""
    from ..codegen.generate import ensure_user_module
    from ..rulebook.rule import Family, Rule

    if isinstance(rule_or_family, Rule):
        family = Family.of(rule_or_family)
    elif isinstance(rule_or_family, Family):
        family = rule_or_family
    else:
        raise TypeError(f"expected a symopt.Rule or Family, got {type(rule_or_family).__name__}")
    path, digest = ensure_user_module(family)
    with _lock:
        mod = _user_modules.get(digest)
        if mod is not None:
            return mod
        mod_name = f"symopt_user_kernels.{path.stem}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:  # pragma: no cover
            raise ImportError(f"cannot import generated module {path}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(mod_name, None)
            raise
        if getattr(mod, "INPUT_HASH", None) != digest:  # pragma: no cover - guarded by ensure_user_module
            raise ImportError(f"generated module {path} does not match its rule (hash mismatch)")
        _user_modules[digest] = mod
        return mod


def load(rule):
    """Module for a built-in name or a user Rule/Family."""
    if isinstance(rule, str):
        return load_builtin(rule)
    return load_user(rule)
