"""Finding and loading generated modules, without SymPy.

Built-in rules live in the checked-in package ``symopt.generated`` (the
``generated/`` folder), indexed by ``symopt.generated.RULES``: :func:`load_builtin`.

A user :class:`~symopt.rulebook.rule.Rule` (or ``Family``) is generated above this
stage: :mod:`symopt.user_modules` has the code generator check, print, seal and
audit its module (cached in ``$SYMOPT_CACHE_DIR``) and hands the checked text to
:func:`execute`, which runs it compiled with the cache file's path as its file name
(so numba's on-disk cache works for it as well; the file is never imported by path
after the check), or from memory with numba's disk cache turned off when no cache
folder was writable.  ``symopt/__init__.py`` registers that generator with
:func:`set_user_rule_loader`, so :func:`load` accepts a user rule while this
package imports nothing of the code generator.
"""

from __future__ import annotations

import importlib
import sys
import types

_user_rule_loader = None
_user_backend_loader = None
#: The array backends whose modules ``generated/<backend>/`` holds (codegen/render.py's TARGETS).
BACKENDS = ("torch", "jax")


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


def set_user_rule_loader(loader) -> None:
    """Use ``loader(rule) -> module`` for every rule that is not a built-in name or a loaded module."""
    global _user_rule_loader
    _user_rule_loader = loader


def set_user_backend_loader(loader) -> None:
    """Use ``loader(rule, backend) -> module`` for the array-backend module of a user rule."""
    global _user_backend_loader
    _user_backend_loader = loader


def load_backend(rule, backend: str):
    """The ``backend`` (``"torch"``, ``"jax"``) module of a built-in name or a user Rule/Family,
    paired with :func:`load` of the same rule: the two declare the same formula hash."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; array backends are: {', '.join(BACKENDS)}")
    main = load(rule)
    name = main.FAMILY["name"]
    from .. import generated

    if isinstance(rule, str) or (_is_optimizer_module(rule) and generated.RULES.get(name) == rule.__name__.rpartition(".")[2]):
        if name not in importlib.import_module(f"symopt.generated.{backend}").RULES:
            # a matrix rule whose plan kind has no array template (codegen/render.py: array_plan_kind)
            kind = next((v["matrix"].get("kind", "matrix") for v in main.FAMILY["variants"] if "matrix" in v), "matrix")
            raise ValueError(f"rule {name!r} has no {backend} module: its {kind} plan has no {backend} template yet; "
                             f"it steps through its Numba kernels (backend='numba', CPU)")
        mod = importlib.import_module(f"symopt.generated.{backend}.{generated.RULES[name]}")
    elif _is_optimizer_module(rule):
        raise TypeError(f"the {backend} backend of user rule {name!r} needs the rule itself (a symopt.Rule or "
                        f"Family), not its loaded Numba module")
    elif _user_backend_loader is None:
        raise TypeError(f"expected a rule name (str) or a symopt.Rule, got {type(rule).__name__}")
    else:
        mod = _user_backend_loader(rule, backend)
    if mod.FORMULA_HASH != main.FAMILY["formula_hash"]:
        raise ImportError(f"the {backend} module of {name!r} was generated from another formula than its Numba "
                          f"module (run `symopt generate`)")
    return mod


def _is_optimizer_module(obj) -> bool:
    return isinstance(obj, types.ModuleType) and isinstance(getattr(obj, "FAMILY", None), dict)


def load(rule):
    """The generated module of a built-in name, of an already loaded optimizer module, or of a user Rule/Family."""
    if isinstance(rule, str):
        return load_builtin(rule)
    if _is_optimizer_module(rule):
        return rule
    if _user_rule_loader is None:
        raise TypeError(f"expected a rule name (str) or a generated optimizer module, got {type(rule).__name__}")
    return _user_rule_loader(rule)


#: The numba decorator as the templates write it; in-memory modules turn its disk cache off.
_CACHED_NJIT = "@numba.njit(cache=True"


def execute(checked, package: str):
    """A module object from the checked text of a generated module.

    ``checked`` has ``name``, ``text`` (sealed and audited by the code generator),
    ``digest`` (the input hash the text must declare as ``INPUT_HASH``) and
    ``path`` (the cache file it was read from or written to; None: in memory).
    The module is registered as ``<package>.<name>`` in ``sys.modules``.
    """
    mod_name = f"{package}.{checked.name}"
    text = checked.text
    if checked.path is None:
        # numba can only cache functions that live in a file; keep everything else identical.
        text = text.replace(_CACHED_NJIT, "@numba.njit(cache=False")
        filename = f"<symopt {package} {checked.name}>"
    else:
        filename = str(checked.path)
    code = compile(text, filename, "exec", dont_inherit=True)
    mod = types.ModuleType(mod_name)
    if checked.path is not None:
        mod.__file__ = filename
    sys.modules[mod_name] = mod
    try:
        exec(code, mod.__dict__)  # the generated module's own text, sealed and audited by the generator
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    if getattr(mod, "INPUT_HASH", None) != checked.digest:
        sys.modules.pop(mod_name, None)
        raise ImportError(f"generated module {filename} does not match its input (hash mismatch)")
    return mod
