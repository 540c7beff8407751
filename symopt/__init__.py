"""symopt: optimizer update rules written in SymPy, emitted as checked Numba kernels.

Public API::

    symopt.optimizer(name_or_rule, params, **hyper)   # runtime; no SymPy import for built-ins
    symopt.rules()                                     # names of the built-in rules
    symopt.rule(name, **options)                       # the SymPy Rule (LaTeX via .latex())
    symopt.save(path, opt); symopt.load(path, params)  # .npz checkpoints, exact resume, no pickle
    symopt.Rule, symopt.Hyper, symopt.State, symopt.Family, symopt.t
    symopt.gradient(expr, wrt)                         # compiled value and gradient of a SymPy expression
    symopt.nn.MLP / loss / activation                  # networks with SymPy-derived, generated kernels

The pipeline, one package per stage: ``rulebook`` (math) -> ``codegen`` (plan,
printer, templates) -> ``generated`` (checked-in kernels) -> ``runtime`` ->
``verify``.
"""

from ._version import __version__
from .runtime.checkpoint import load, save
from .runtime.flat import FlatBuffer
from .runtime.optimizer import NonFiniteGradientError, Optimizer, optimizer
from .runtime.threads import get_num_threads, set_num_threads

__all__ = [
    "__version__", "optimizer", "Optimizer", "NonFiniteGradientError", "rules", "rule", "family", "save", "load",
    "Rule", "Hyper", "State", "Family", "RuleError", "t", "FlatBuffer", "set_num_threads", "get_num_threads",
    "gradient", "nn",
]

_LAZY = {"Rule", "Hyper", "State", "Family", "RuleError", "t"}


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
    if name == "nn":  # the subpackage, imported on first use (its runtime needs no SymPy)
        import importlib

        return importlib.import_module(".nn", __name__)
    if name in _LAZY:
        from . import rulebook

        return getattr(rulebook, name)
    raise AttributeError(f"module 'symopt' has no attribute {name!r}")
