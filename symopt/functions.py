"""The function registry: everything symopt knows of each math function, one record per function.

Every stage reads :data:`REGISTRY` and keeps no table of its own: the text parser
(``rulebook/parse.py``: which names a formula may call), rule validation
(``rulebook/validate.py``: which functions a rule may use), the printers
(``codegen/printers.py``: Numba kernel, vectorized helper, float64 scalar), the
high-precision reference (``derive/mpeval.py``) and reverse mode
(``derive/reverse.py``: the local derivative).  The PyTorch and JAX fields are the
data the printers of those backends read.

Printing is by template: ``{0}``, ``{1}`` are the printed arguments, ``{0:p}`` the
argument in parentheses unless it is an atom or a call; the Numba and scalar
printers also fill ``{one}``, ``{zero}`` (the constants 1 and 0 in their own
number type) and ``{ctor}`` (the kernel's float constructor, ``np.float32``).
A variadic function (``Max``, ``Min``) has a binary template, applied as a left
fold: ``Max(a, b, c)`` prints as ``max(max(a, b), c)``.

Derivatives are SymPy expressions in the forward sweep's symbols: ``derivative(v,
*args)`` gets the node's value ``v`` and its arguments and returns one partial per
argument.  Conventions at kinks (the same as PyTorch's autograd):

* ``|x|' = sign(x)``, with ``sign(0) = 0``;
* ``sign' = 0``, ``H' = 0``, ``floor' = ceiling' = 0`` everywhere (the jumps are ignored);
* ``Max``/``Min``: the gradient goes to the arguments equal to the result, split evenly
  among them -- ``∂max(a, b)/∂a = 1, 1/2, 0`` for ``a > b, a = b, a < b``
  (``torch.maximum``; ``torch.amax`` for more arguments);
* ``Mod(a, b) = a − b·floor(a/b)`` (the sign of ``b``, as Python's ``%``):
  ``∂/∂a = 1``, ``∂/∂b = −floor(a/b)`` (``torch.remainder``).

The value ``Heaviside(x)`` is SymPy's, ``H(0) = 1/2`` unless a second argument
pins it; the derivation stage pins ``H(0) = 0`` where it writes a step itself.

``sqrt`` is not a record: SymPy writes it as ``Pow(x, 1/2)``, which each printer's
``Pow`` prints.  This module imports only SymPy (mpmath when a value is evaluated),
so every stage may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

__all__ = ["MathFunction", "REGISTRY", "BY_CLASS", "BY_NAME", "registered", "supported_text"]


@dataclass(frozen=True)
class MathFunction:
    """One supported function: its SymPy class and how every stage handles it."""

    sympy: type                  # the SymPy class (nodes are matched by exact class)
    arity: int                   # arguments of the templates (2 for a variadic fold)
    parse_names: tuple           # names a text formula may call it by (empty: not in formulas)
    in_rules: bool               # rule validation admits it in optimizer rules
    numba: str                   # Numba kernel template (NumPy or math calls, kernel-dtype constants)
    scalar: str                  # float64 scalar template (``math``, Python floats)
    torch: str                   # PyTorch template (``torch.*``)
    jax: str                     # JAX template (``jnp.*``, ``special.*`` from jax.scipy)
    mpmath: Callable             # value at mpmath numbers (imports mpmath when called)
    derivative: Callable         # (v, *args) -> one partial per argument, in forward symbols
    vector_helper: str = ""      # ``_v<name>_f32``/``_f64`` helper of ``templates/_vecmath.jinja``
    variadic: bool = False       # any number >= 2 of arguments, printed as a left fold
    defaults: tuple = ()         # values of trailing arguments an expression may leave out

    @property
    def name(self) -> str:
        """The SymPy class name (``Abs``, ``log1p``): printers dispatch on it."""
        return self.sympy.__name__

    def full_args(self, args) -> tuple:
        """``args`` with the omitted trailing arguments filled from :attr:`defaults`."""
        missing = self.arity - len(args)
        if self.variadic or missing <= 0:
            return tuple(args)
        return (*args, *self.defaults[len(self.defaults) - missing:])


def _mp(name: str) -> Callable:
    """The mpmath function ``name``, looked up when first called (mpmath loads lazily)."""
    def evaluate(*args):
        import mpmath

        return getattr(mpmath, name)(*args)
    evaluate.__name__ = f"mpmath_{name}"
    return evaluate


def _mp_sign(x):
    import mpmath

    return mpmath.mpf(0 if x == 0 else (1 if x > 0 else -1))


def _mp_heaviside(x, h0):
    import mpmath

    return h0 if x == 0 else mpmath.mpf(1 if x > 0 else 0)


def _mp_max(*args):
    return max(args)


def _mp_min(*args):
    return min(args)


def _mp_mod(a, b):
    import mpmath

    return a - b * mpmath.floor(a / b)


def _even_split(v, *args) -> tuple:
    """``∂ max(a_1..a_n)/∂a_i = [a_i = v] / #{j: a_j = v}``: the tied arguments share the gradient."""
    ties = sp.Add(*[sp.Piecewise((1, sp.Eq(a, v)), (0, True)) for a in args])
    return tuple(sp.Piecewise((0, sp.Ne(a, v)), (1 / ties, True)) for a in args)


def _zero(v, *args) -> tuple:
    return tuple(sp.Integer(0) for _ in args)


def _call(module: str, name: str, arity: int = 1) -> str:
    return f"{module}.{name}(" + ", ".join(f"{{{i}}}" for i in range(arity)) + ")"


def _elementary(cls, names, in_rules, *, np=None, math=None, torch=None, jax=None, **kw) -> MathFunction:
    """A one-argument function that every backend calls by (nearly) the same name."""
    base = cls.__name__
    return MathFunction(
        sympy=cls, arity=1, parse_names=names, in_rules=in_rules,
        numba=_call("np", np or base), scalar=_call("math", math or base),
        torch=_call("torch", torch or base), jax=_call("jnp", jax or base), mpmath=_mp(base), **kw)


_TWO_OVER_SQRT_PI = sp.Float((2 / sp.sqrt(sp.pi)).evalf(30), 30)  # erf'(x) = 2/√π e^(−x²)
_HEAVISIDE = "({one} if {0} > {zero} else ({1} if {0} == {zero} else {zero}))"

#: Every function symopt supports, in the order error messages list them.
REGISTRY: tuple = (
    _elementary(sp.exp, ("exp",), True, vector_helper="exp", derivative=lambda v, x: (v,)),
    _elementary(sp.log, ("log",), True, derivative=lambda v, x: (1 / x,)),
    _elementary(sp.sin, ("sin",), True, derivative=lambda v, x: (sp.cos(x),)),
    _elementary(sp.cos, ("cos",), True, derivative=lambda v, x: (-sp.sin(x),)),
    _elementary(sp.tan, ("tan",), True, derivative=lambda v, x: (1 + v**2,)),
    _elementary(sp.tanh, ("tanh",), True, vector_helper="tanh", derivative=lambda v, x: (1 - v**2,)),
    _elementary(sp.sinh, ("sinh",), True, derivative=lambda v, x: (sp.cosh(x),)),
    _elementary(sp.cosh, ("cosh",), True, derivative=lambda v, x: (sp.sinh(x),)),
    _elementary(sp.atan, ("atan",), True, np="arctan", jax="arctan", derivative=lambda v, x: (1 / (1 + x**2),)),
    MathFunction(
        sympy=sp.erf, arity=1, parse_names=("erf",), in_rules=True,
        # math.erf returns a double: cast back so a float32 kernel stays float32.
        numba="{ctor}(math.erf({0}))", scalar="math.erf({0})", torch="torch.erf({0})",
        jax="special.erf({0})", mpmath=_mp("erf"),
        derivative=lambda v, x: (_TWO_OVER_SQRT_PI * sp.exp(-x**2),)),
    MathFunction(
        sympy=log1p, arity=1, parse_names=("log1p",), in_rules=True,
        numba="np.log1p({0})", scalar="math.log1p({0})", torch="torch.log1p({0})", jax="jnp.log1p({0})",
        mpmath=_mp("log1p"), derivative=lambda v, x: (1 / (1 + x),)),
    MathFunction(
        sympy=expm1, arity=1, parse_names=("expm1",), in_rules=True,
        numba="np.expm1({0})", scalar="math.expm1({0})", torch="torch.expm1({0})", jax="jnp.expm1({0})",
        mpmath=_mp("expm1"), derivative=lambda v, x: (v + 1,)),
    MathFunction(
        sympy=sp.Abs, arity=1, parse_names=("abs", "Abs"), in_rules=True,
        numba="abs({0})", scalar="abs({0})", torch="torch.abs({0})", jax="jnp.abs({0})",
        mpmath=abs, derivative=lambda v, x: (sp.sign(x),)),
    MathFunction(
        sympy=sp.sign, arity=1, parse_names=("sign",), in_rules=True,
        numba="np.sign({0})", scalar="(math.copysign(1.0, {0}) if {0} != 0.0 else 0.0)",
        torch="torch.sign({0})", jax="jnp.sign({0})", mpmath=_mp_sign, derivative=_zero),
    MathFunction(
        sympy=sp.Heaviside, arity=2, defaults=(sp.S.Half,), parse_names=("Heaviside",), in_rules=True,
        numba=_HEAVISIDE, scalar=_HEAVISIDE, torch="torch.heaviside({0}, torch.as_tensor({1}, dtype={0:p}.dtype))",
        jax="jnp.heaviside({0}, {1})", mpmath=_mp_heaviside, derivative=_zero),
    MathFunction(
        sympy=sp.Max, arity=2, variadic=True, parse_names=("max", "Max"), in_rules=True,
        numba="max({0}, {1})", scalar="max({0}, {1})", torch="torch.maximum({0}, {1})",
        jax="jnp.maximum({0}, {1})", mpmath=_mp_max, derivative=_even_split),
    MathFunction(
        sympy=sp.Min, arity=2, variadic=True, parse_names=("min", "Min"), in_rules=True,
        numba="min({0}, {1})", scalar="min({0}, {1})", torch="torch.minimum({0}, {1})",
        jax="jnp.minimum({0}, {1})", mpmath=_mp_min, derivative=_even_split),
    MathFunction(
        sympy=sp.floor, arity=1, parse_names=("floor",), in_rules=True,
        numba="np.floor({0})", scalar="float(math.floor({0}))", torch="torch.floor({0})", jax="jnp.floor({0})",
        mpmath=_mp("floor"), derivative=_zero),
    MathFunction(
        sympy=sp.ceiling, arity=1, parse_names=("ceiling",), in_rules=True,
        numba="np.ceil({0})", scalar="float(math.ceil({0}))", torch="torch.ceil({0})", jax="jnp.ceil({0})",
        mpmath=_mp("ceil"), derivative=_zero),
    MathFunction(
        # Always parenthesised: ``%`` binds like ``*``, so ``a*b % c`` would read as ``(a*b) % c``.
        sympy=sp.Mod, arity=2, parse_names=("Mod",), in_rules=True,
        numba="({0:p} % {1:p})", scalar="({0:p} % {1:p})", torch="torch.remainder({0}, {1})",
        jax="jnp.remainder({0}, {1})", mpmath=_mp_mod, derivative=lambda v, a, b: (sp.Integer(1), -sp.floor(a / b))),
)

#: The record of each SymPy class.
BY_CLASS: dict = {f.sympy: f for f in REGISTRY}
#: The record of each SymPy class name (``"Abs"``, ``"log1p"``).
BY_NAME: dict = {f.name: f for f in REGISTRY}


def registered(node) -> MathFunction | None:
    """The record of ``node``'s exact class (a subclass has none: it could print itself)."""
    return BY_CLASS.get(type(node))


def supported_text() -> str:
    """The operations and functions reverse mode differentiates, for messages and docs."""
    return "+, -, *, /, ** and " + ", ".join(f.name for f in REGISTRY)
