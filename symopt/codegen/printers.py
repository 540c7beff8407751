"""The printing stage: SymPy expressions to Python/Numba source text.

Two printers, both subclasses of SymPy's ``PythonCodePrinter`` that override only
the ``_print_<Class>`` methods they need:

* :class:`KernelPrinter` prints per-element code for a Numba kernel of one dtype.
  Every numeric constant is cast to the kernel dtype (``np.float32(0.5)``), so a
  float32 kernel computes in float32 and vectorizes (numba promotes ``1 - x`` with
  a float32 ``x`` to float64 otherwise).  ``sqrt`` and small integer powers are
  printed explicitly; ``Piecewise`` becomes a conditional expression, never
  ``np.select`` (which evaluates every branch).
* :class:`ScalarPrinter` prints the per-step scalar function: plain Python float64
  with the ``math`` module, run once per step, no NumPy, no SymPy.

Functions print from the templates of :mod:`symopt.functions` (``numba`` and
``scalar``); every other function SymPy's printer would know is refused, so
nothing reaches generated code that the registry does not list.

Names come from a mapping ``Symbol -> identifier`` built by :mod:`.names`; a symbol
missing from it is an error (printers never invent identifiers from user text).
:func:`float64_function` compiles one printed expression into a Python function.
"""

from __future__ import annotations

import functools
import string

import sympy as sp
from sympy.printing.numpy import JaxPrinter
from sympy.printing.pycode import PythonCodePrinter
from sympy.printing.pytorch import TorchPrinter

from ..functions import BY_NAME, registered
from .audit import audit_module

__all__ = ["KernelPrinter", "ScalarPrinter", "TorchArrayPrinter", "JaxArrayPrinter", "float64_function"]

_FLOAT_TYPES = {"float32": "np.float32", "float64": "np.float64"}


class _Template(string.Formatter):
    """Fills a registry template: ``{i}`` prints argument i, ``{i:p}`` in parentheses."""

    def __init__(self, printer):
        self.printer = printer

    def format_field(self, value, format_spec):
        if isinstance(value, str):  # a constant or an already printed fold
            return value
        if format_spec == "p":
            return self.printer._paren(value)
        return self.printer._print(value)


class _Registry:
    """What every printer shares: generated names for symbols, functions from the registry
    (others refused).  A subclass names its registry field (:attr:`template_field`) and fills
    ``{one}``, ``{zero}``, ``{ctor}`` with ``template_constants()``."""

    #: The registry field this printer's templates come from.
    template_field = ""

    def __init__(self, names: dict, settings=None):
        super().__init__(settings or {})
        self.known_functions = {}
        self.names = names

    def _print_Symbol(self, expr):
        try:
            return self.names[expr]
        except KeyError:
            raise ValueError(f"symbol {expr.name!r} has no generated identifier") from None

    _print_Dummy = _print_Symbol

    def _print_not_supported(self, expr):
        return super()._print_not_supported(expr)

    def _print_function_call(self, expr):
        # Dispatch target of every registered ``_print_<Name>``; subclasses override
        # _print_registered, which this looks up on the instance.
        return self._print_registered(expr)

    def _print_registered(self, expr):
        fn = registered(expr)
        if fn is None:  # a subclass of a registered class: it could print itself
            return self._print_not_supported(expr)
        return self._fill(fn, getattr(fn, self.template_field), expr.args)

    def _fill(self, fn, template: str, args) -> str:
        fill = _Template(self)
        consts = self.template_constants()
        if fn.variadic:
            out = args[0]
            for a in args[1:]:
                out = fill.format(template, out, a, **consts)
            return out
        return fill.format(template, *fn.full_args(args), **consts)

    def _print_Function(self, expr):
        return self._print_not_supported(expr)

    def _print_Relational(self, expr):
        op = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}[expr.rel_op]
        return f"({self._print(expr.lhs)} {op} {self._print(expr.rhs)})"

    def _print_And(self, expr):
        return "(" + " and ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr):
        return "(" + " or ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr):
        return f"(not {self._print(expr.args[0])})"

    def _print_BooleanTrue(self, expr):
        return "True"

    def _print_BooleanFalse(self, expr):
        return "False"

    def _print_Piecewise(self, expr):
        # (a if c1 else (b if c2 else d)): only the taken branch is evaluated.
        out = self._print(expr.args[-1].expr)
        for e, c in reversed(expr.args[:-1]):
            out = f"({self._print(e)} if {self._print(c)} else {out})"
        return out

    def _paren(self, e) -> str:
        """Print ``e``, in parentheses unless it is an atom or a function call."""
        text = self._print(e)
        if e.is_Atom and not (e.is_Number and e.is_negative) or isinstance(e, sp.Function):
            return text
        return f"({text})"


def _registry_only(cls, parent):
    """Registered functions print from their templates; every other function ``parent`` knows
    (acos, gamma, ...) is refused instead of printed as a bare, unimported name."""
    for attr in dir(parent):
        if (attr.startswith("_print_") and attr not in cls.__dict__ and attr not in _Registry.__dict__
                and isinstance(getattr(sp, attr[7:], None), sp.FunctionClass)):
            setattr(cls, attr, _Registry._print_not_supported)
    for name in BY_NAME:
        setattr(cls, f"_print_{name}", _Registry._print_function_call)
    return cls


@functools.partial(_registry_only, parent=PythonCodePrinter)
class _Base(_Registry, PythonCodePrinter):
    """The Numba and float64 scalar printers' base: Python code, strict."""

    _default_settings = {**PythonCodePrinter._default_settings, "strict": True,
                         "fully_qualified_modules": False}


class ScalarPrinter(_Base):
    """Per-step scalar code: Python floats (IEEE double) and ``math``."""

    template_field = "scalar"

    def template_constants(self) -> dict:
        return {"one": "1.0", "zero": "0.0", "ctor": "float"}

    def _print_Float(self, expr):
        return repr(float(expr))

    def _print_Integer(self, expr):
        return repr(float(int(expr)))

    def _print_Rational(self, expr):
        return f"({float(expr.p)!r} / {float(expr.q)!r})"

    def _print_Half(self, expr):
        return "0.5"

    def _print_Pi(self, expr):
        return "math.pi"

    def _print_Exp1(self, expr):
        return "math.e"

    def _print_Pow(self, expr, rational=False):
        b, e = expr.args
        if e == sp.S.Half:
            return f"math.sqrt({self._print(b)})"
        if e == -sp.S.Half:
            return f"(1.0 / math.sqrt({self._print(b)}))"
        if e == -1:
            return f"(1.0 / {self._paren(b)})"
        return f"({self._paren(b)} ** {self._paren(e)})"


class KernelPrinter(_Base):
    """Per-element code for a Numba kernel whose arrays have dtype ``dtype``.

    With ``vector_math``, functions with a registry ``vector_helper`` (``exp``, ``tanh``) and
    ``x**(1/3)`` print as calls to the vectorizable helpers of ``templates/_vecmath.jinja``
    (``_vexp_f32``, ``_vcbrt_f64`` ...), and :attr:`helpers` collects the ones used, so the
    module template emits only those.
    """

    template_field = "numba"

    def __init__(self, names: dict, dtype: str, vector_math: bool = False):
        super().__init__(names)
        if dtype not in _FLOAT_TYPES:
            raise ValueError(f"unsupported kernel dtype {dtype!r}")
        self.dtype = dtype
        self.ctor = _FLOAT_TYPES[dtype]
        self.vector_math = vector_math
        self.helpers: set = set()

    def template_constants(self) -> dict:
        return {"one": self.const(1), "zero": self.const(0), "ctor": self.ctor}

    def _helper(self, fn: str, arg) -> str:
        self.helpers.add(fn)
        return f"_v{fn}_{self.dtype.replace('float', 'f')}({self._print(arg)})"

    def _print_registered(self, expr):
        fn = registered(expr)
        if self.vector_math and fn is not None and fn.vector_helper:
            return self._helper(fn.vector_helper, expr.args[0])
        return super()._print_registered(expr)

    def const(self, value: float) -> str:
        return f"{self.ctor}({float(value)!r})"

    def _print_Float(self, expr):
        return self.const(expr)

    def _print_Integer(self, expr):
        return self.const(int(expr))

    def _print_Rational(self, expr):
        return self.const(float(expr))

    def _print_Half(self, expr):
        return self.const(0.5)

    def _print_Pi(self, expr):
        return self.const(float(sp.pi))

    def _print_Exp1(self, expr):
        return self.const(float(sp.E))

    def _print_Pow(self, expr, rational=False):
        b, e = expr.args
        if self.vector_math and e == sp.Rational(1, 3):
            return self._helper("cbrt", b)
        base = self._paren(b)
        one = self.const(1)
        if e.is_Integer and 1 <= abs(int(e)) <= 4:
            prod = "(" + " * ".join([base] * abs(int(e))) + ")"
            return prod if e > 0 else f"({one} / {prod})"
        if e == sp.S.Half:
            return f"np.sqrt({self._print(b)})"
        if e == -sp.S.Half:
            return f"({one} / np.sqrt({self._print(b)}))"
        if e.is_Rational and e.q == 2 and abs(e.p) <= 7:
            whole = abs(int(e.p)) // 2
            prod = " * ".join([base] * whole + [f"np.sqrt({self._print(b)})"])
            return f"({prod})" if e > 0 else f"({one} / ({prod}))"
        return f"({base} ** {self._paren(e)})"


class _ArrayCode(_Registry):
    """Per-element code over whole arrays (the PyTorch and JAX backends): the array library's
    calls (:attr:`lib`), constants as Python floats (weakly typed: ``0.5 * x`` keeps ``x``'s dtype,
    as the Numba kernels' dtype-cast constants do), ``Piecewise`` as a nested ``where`` (both
    branches are computed, the selected one kept), comparisons and logic as element operators."""

    lib = ""

    def template_constants(self) -> dict:
        return {"one": "1.0", "zero": "0.0", "ctor": "float"}

    def _print_Float(self, expr):
        return repr(float(expr))

    def _print_Integer(self, expr):
        return repr(float(int(expr)))

    def _print_Rational(self, expr):
        return repr(float(expr))

    def _print_Half(self, expr):
        return "0.5"

    def _print_Pi(self, expr):
        return repr(float(sp.pi))

    def _print_Exp1(self, expr):
        return repr(float(sp.E))

    def _print_And(self, expr):
        return "(" + " & ".join(self._condition(a) for a in expr.args) + ")"

    def _print_Or(self, expr):
        return "(" + " | ".join(self._condition(a) for a in expr.args) + ")"

    def _print_Not(self, expr):
        return f"(~{self._condition(expr.args[0])})"

    def _print_Piecewise(self, expr):
        out = self._print(expr.args[-1].expr)
        if expr.args[-1].cond != sp.true:
            raise ValueError("a Piecewise without an otherwise branch cannot be printed over arrays")
        for e, c in reversed(expr.args[:-1]):
            out = f"{self.lib}.where({self._condition(c)}, {self._print(e)}, {out})"
        return out

    def _condition(self, c) -> str:
        """A condition as a boolean array: a hoisted condition is a per-step scalar (1.0 or 0.0)."""
        if isinstance(c, sp.Symbol):
            return f"({self._print(c)} != 0.0)"
        return self._print(c)

    def _print_Pow(self, expr, rational=False):
        b, e = expr.args
        base = self._paren(b)
        if e.is_Integer and 1 <= abs(int(e)) <= 4:
            prod = "(" + " * ".join([base] * abs(int(e))) + ")"
            return prod if e > 0 else f"(1.0 / {prod})"
        if e == sp.S.Half:
            return f"{self.lib}.sqrt({self._print(b)})"
        if e == -sp.S.Half:
            return f"(1.0 / {self.lib}.sqrt({self._print(b)}))"
        return f"({base} ** {self._paren(e)})"


@functools.partial(_registry_only, parent=TorchPrinter)
class TorchArrayPrinter(_ArrayCode, TorchPrinter):
    """Element code as PyTorch ops over tensors: SymPy's ``TorchPrinter`` (``torch.where`` for
    ``Piecewise``, ``torch.sqrt``), with functions from the registry's ``torch`` templates and
    what the tensor backend needs on top: a ``Max``/``Min`` with a number prints as
    ``torch.clamp`` (``torch.maximum`` takes tensors only), constants as Python floats, small
    integer powers as products (as the Numba kernels compute them)."""

    _default_settings = {**TorchPrinter._default_settings, "strict": True}
    template_field = "torch"
    lib = "torch"

    def _print_registered(self, expr):
        if isinstance(expr, (sp.Max, sp.Min)):
            nums = [a for a in expr.args if a.is_Number]
            rest = [a for a in expr.args if not a.is_Number]
            if nums and rest:
                inner = rest[0] if len(rest) == 1 else type(expr)(*rest, evaluate=False)
                bound = (max if isinstance(expr, sp.Max) else min)(float(n) for n in nums)
                side = "min" if isinstance(expr, sp.Max) else "max"
                return f"torch.clamp({self._print(inner)}, {side}={bound!r})"
        return super()._print_registered(expr)


@functools.partial(_registry_only, parent=JaxPrinter)
class JaxArrayPrinter(_ArrayCode, JaxPrinter):
    """Element and per-step scalar code as ``jax.numpy`` calls (traced under ``jax.jit``):
    SymPy's ``JaxPrinter`` with functions from the registry's ``jax`` templates, ``Piecewise``
    as nested ``jnp.where`` (SymPy's prints ``select`` with a NaN default), constants as Python
    floats."""

    _default_settings = {**JaxPrinter._default_settings, "strict": True, "fully_qualified_modules": False}
    template_field = "jax"
    lib = "jnp"


_NUMPY_IMPORTS = "import math\nimport numpy as np\n"
_JAX_IMPORTS = "import jax\nimport jax.numpy as jnp\nfrom jax.scipy import special\n"


def _audited_function(printer_class, expr, args, label: str, imports: str = _NUMPY_IMPORTS, **printer_args):
    """``f(*args)`` returning ``expr`` as printed by ``printer_class``: the source holds only the
    printer's output and generated argument names ``a0, a1, ...``, and passes the audit before it runs."""
    names = {s: f"a{i}" for i, s in enumerate(args)}
    body = printer_class(names, **printer_args).doprint(expr)
    src = f"{imports}\n\ndef f({', '.join(names.values())}):\n    return {body}\n"
    audit_module(src, label)
    scope: dict = {}
    exec(compile(src, label, "exec"), scope)  # noqa: S102 - audited printer output
    return scope["f"]


def float64_function(expr, args):
    """A Python function of ``args`` (SymPy symbols) evaluating ``expr`` as the float64 kernel would
    (NumPy float64 arithmetic, :class:`KernelPrinter`)."""
    return _audited_function(KernelPrinter, expr, args, "<symopt float64 check>", dtype="float64")


def scalar_function(expr, args, label: str = "<symopt scalar function>"):
    """A Python function of ``args`` evaluating ``expr`` as a per-step scalar function would
    (Python floats and ``math``, :class:`ScalarPrinter`): schedules of ``t``."""
    return _audited_function(ScalarPrinter, expr, args, label)


def jax_function(expr, args, label: str = "<symopt jax function>"):
    """A function of ``args`` evaluating ``expr`` in ``jax.numpy`` (:class:`JaxArrayPrinter`), traceable
    under ``jax.jit``: a schedule of ``t`` inside the JAX backend's update."""
    return _audited_function(JaxArrayPrinter, expr, args, label, imports=_JAX_IMPORTS)
