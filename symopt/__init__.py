"""symopt: optimizer update rules written in SymPy, emitted as checked Numba kernels.

Public API::

    symopt.optimizer(name_or_rule, params, **hyper)   # runtime; no SymPy import for built-ins
    symopt.kernel(name_or_rule, dtype, **options)      # one rule's generated functions, called directly
    symopt.rules()                                     # names of the built-in rules
    symopt.rule(name, **options)                       # the SymPy Rule (LaTeX via .latex())
    symopt.save(path, opt); symopt.load(path, params)  # .npz checkpoints, exact resume, no pickle
    symopt.Rule, symopt.Hyper, symopt.State, symopt.Family, symopt.t
    symopt.compose(base, *symopt.transforms.X(...))   # one Rule (and one kernel) from a rule and transforms
    symopt.schedule.cosine(...)                        # lr=schedule: a per-step float64 scalar of t
    symopt.gradient(expr, wrt)                         # compiled value and gradient of a SymPy expression
    symopt.nn.MLP / loss / activation                  # networks with SymPy-derived, generated kernels

The pipeline, one package per stage: ``rulebook`` and ``derive`` (math) -> ``codegen``
(plan, printer, templates) -> ``generated`` (checked-in kernels) -> ``runtime``, with
``verify`` beside; this module and ``user_modules`` wire a user rule's generated module
into the runtime (tests/test_import_layers.py checks that imports run this way only).
"""

from ._version import __version__
from .cachedirs import configure_numba_cache as _configure_numba_cache

_configure_numba_cache()  # before any module whose functions use numba's cache=True is imported
from . import user_modules as _user_modules  # noqa: E402
from .runtime import checkpoint as _checkpoint  # noqa: E402
from .runtime import kernels as _kernels  # noqa: E402
from .runtime.checkpoint import CheckpointError  # noqa: E402
from .runtime.flat import FlatBuffer  # noqa: E402
from .runtime.grouped import optimizer  # noqa: E402
from .runtime.optimizer import NonFiniteGradientError, Optimizer, load, save  # noqa: E402
from .runtime.rule_kernel import RuleKernel, kernel  # noqa: E402
from .runtime.threads import get_num_threads, set_num_threads  # noqa: E402
from . import views as _views  # noqa: E402


def _schedule_to_data(schedule):
    from .schedule import schedule_to_data

    return schedule_to_data(schedule)


def _schedule_from_data(data):
    from .schedule import schedule_from_data

    return schedule_from_data(data)


def _html_view(obj):
    from .reporting import html_view

    return html_view(obj)


# The wiring of the pipeline into the runtime, which imports neither SymPy nor the code generator:
# user rules are generated and loaded by symopt.user_modules, schedules in checkpoints are
# SymPy expressions (encoded and rebuilt by symopt.schedule, imported only when one is met).
_kernels.set_user_rule_loader(_user_modules.load_rule)
_kernels.set_user_backend_loader(_user_modules.load_backend)
_checkpoint.set_schedule_codec(_schedule_to_data, _schedule_from_data)
# Jupyter's view of a Rule, Family, KernelPlan or gradient (their _repr_html_) is the report's page.
_views.set_html_view(_html_view)

__all__ = [
    "__version__", "optimizer", "Optimizer", "NonFiniteGradientError", "CheckpointError", "kernel", "RuleKernel",
    "rules", "rule", "family", "save", "load",
    "parse_expression",
    "Rule", "Hyper", "State", "Family", "RuleError", "t", "FlatBuffer", "set_num_threads", "get_num_threads",
    "gradient", "nn", "compose", "transforms", "schedule", "report",
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


def report(obj, **options) -> str:
    """The HTML page of a rule (name, Rule or Family), schedule, transform, loss, activation,
    KernelPlan or gradient, from its equations to its kernel (see :mod:`symopt.reporting`)."""
    from .reporting import report as _report

    return _report(obj, **options)


def gradient(expr, wrt):
    """Compiled ``f(x) -> (value, grad)`` of a scalar SymPy expression, by reverse-mode accumulation.

    See :func:`symopt.gradients.gradient` (imports SymPy when called, not before).
    """
    from .gradients import gradient as _gradient

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
