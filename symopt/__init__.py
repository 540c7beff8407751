"""symopt: optimizer update rules written in SymPy, emitted as checked Numba kernels.

Public API::

    symopt.optimizer(name_or_rule, params, **hyper)   # runtime; no SymPy import for built-ins
    symopt.rules()                                     # names of the built-in rules
    symopt.rule(name, **options)                       # the SymPy Rule (LaTeX via .latex())
    symopt.save(path, opt); symopt.load(path, params)  # .npz checkpoints, exact resume, no pickle
    symopt.Rule, symopt.Hyper, symopt.State, symopt.Family, symopt.t
    symopt.compose(base, *symopt.transforms.X(...))   # one Rule (and one kernel) from a rule and transforms
    symopt.schedule.cosine(...)                        # lr=schedule: a per-step float64 scalar of t
    symopt.gradient(expr, wrt)                         # compiled value and gradient of a SymPy expression
    symopt.nn.MLP / loss / activation                  # networks with SymPy-derived, generated kernels

The pipeline, one package per stage: ``rulebook`` (math) -> ``codegen`` (plan,
printer, templates) -> ``generated`` (checked-in kernels) -> ``runtime`` ->
``verify``.
"""

from ._version import __version__
from .cachedirs import configure_numba_cache as _configure_numba_cache

_configure_numba_cache()  # before any module whose functions use numba's cache=True is imported
from .runtime.checkpoint import load, save  # noqa: E402
from .runtime.flat import FlatBuffer  # noqa: E402
from .runtime.optimizer import NonFiniteGradientError, Optimizer, optimizer  # noqa: E402
from .runtime.threads import get_num_threads, set_num_threads  # noqa: E402

__all__ = [
    "__version__", "optimizer", "Optimizer", "NonFiniteGradientError", "rules", "rule", "family", "save", "load",
    "parse_expression",
    "Rule", "Hyper", "State", "Family", "RuleError", "t", "FlatBuffer", "set_num_threads", "get_num_threads",
    "gradient", "nn", "compose", "transforms", "schedule",
]

_LAZY = {"Rule", "Hyper", "State", "Family", "RuleError", "t"}
#: Imported on first use (they import SymPy): name -> (module, attribute or None for the module).
_LAZY_MODULES = {"compose": ("symopt.rulebook.compose", "compose"), "transforms": ("symopt.rulebook.transforms", None),
                 "schedule": ("symopt.schedule", None)}


def parse_expression(text: str, symbols=None):
    """A SymPy expression from formula text such as ``"beta*m + (1 - beta)*g**2"``, read by a
    restricted parser (known functions and plain symbols only; never ``eval``/``sympify``)."""
    from .rulebook.parse import parse_expression as _parse

    return _parse(text, symbols)


def rules() -> list:
    """Names of every built-in rule, in catalog order (does not import SymPy)."""
    from .runtime.kernels import builtin_names

    return builtin_names()


def family(name: str):
    """The :class:`Family` (public name, keyword arguments, variants) of a built-in rule."""
    from .rulebook.catalog import family as _family

    return _family(name)


def rule(name: str, **options):
    """The SymPy :class:`Rule` of a built-in rule; ``options`` pick a variant (``amsgrad=True``)."""
    return family(name).rule_for(**options)


def gradient(expr, wrt):
    """Compiled ``f(x) -> (value, grad)`` of a scalar SymPy expression, by reverse-mode accumulation.

    See :func:`symopt.derive.api.gradient` (imports SymPy when called, not before).
    """
    from .derive.api import gradient as _gradient

    return _gradient(expr, wrt)


def __getattr__(name):
    if name in ("nn", "torch"):  # subpackages imported on first use (symopt.torch imports PyTorch)
        import importlib

        return importlib.import_module("." + name, __name__)
    if name in _LAZY:
        from . import rulebook

        return getattr(rulebook, name)
    if name in _LAZY_MODULES:
        import importlib

        mod_name, attr = _LAZY_MODULES[name]
        mod = importlib.import_module(mod_name)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'symopt' has no attribute {name!r}")
