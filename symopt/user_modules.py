"""The generated modules of user input, wired into the runtime.

A user :class:`~symopt.rulebook.rule.Rule` or ``Family`` and the expression given to
``symopt.gradient`` go through the code generator (:mod:`symopt.codegen`: checked,
planned, printed, sealed, audited and cached in ``$SYMOPT_CACHE_DIR``); the checked
text is then executed by :func:`symopt.runtime.kernels.execute`.  Modules are kept by
input hash, so one rule is generated and compiled once per process.

This is the one place where the code generator meets the runtime: the runtime
itself never imports SymPy or the code generator (``symopt/__init__.py`` registers
:func:`load_rule` with :func:`symopt.runtime.kernels.set_user_rule_loader`).
"""

from __future__ import annotations

import threading

from .runtime import kernels

_lock = threading.Lock()
_loaded: dict = {}


def _keep(checked, package: str):
    """The executed module of ``checked`` (one per input hash and process)."""
    with _lock:
        mod = _loaded.get(checked.digest)
        if mod is None:
            mod = _loaded[checked.digest] = kernels.execute(checked, package)
        return mod


def _family_of(rule_or_family):
    from .rulebook.rule import Family, Rule

    if isinstance(rule_or_family, Rule):
        return Family.of(rule_or_family)
    if isinstance(rule_or_family, Family):
        return rule_or_family
    raise TypeError(f"expected a rule name (str), a symopt.Rule or a Family, got {type(rule_or_family).__name__}")


def load_rule(rule):
    """The optimizer module of a user Rule or Family (checked, generated if needed, loaded)."""
    from .codegen.emit import user_module
    from .codegen.render import family_hash

    family = _family_of(rule)
    with _lock:
        mod = _loaded.get(family_hash(family))
    if mod is not None:
        return mod
    return _keep(user_module(family), "symopt_user_kernels")


def load_backend(rule, backend: str):
    """The array-backend (``"torch"``, ``"jax"``) module of a user Rule or Family."""
    from .codegen.emit import user_backend_module

    return _keep(user_backend_module(_family_of(rule), backend), f"symopt_user_{backend}")


def load_gradient(program):
    """``(module, path)``: the compiled module of a :class:`~symopt.codegen.plan_gradients.TermProgram`
    (``path``: its cache file, None when kept in memory)."""
    from .codegen.emit import gradient_module

    checked = gradient_module(program)
    return _keep(checked, "symopt_user_gradients"), checked.path
