"""The printing stage: SymPy expressions to Python/Numba source text.

Two printers, both subclasses of SymPy's ``PythonCodePrinter`` that override only
the ``_print_<Class>`` methods they need:

* :class:`KernelPrinter` prints per-element code for a Numba kernel of one dtype.
  Every numeric constant is cast to the kernel dtype (``np.float32(0.5)``), so a
  float32 kernel computes in float32 and vectorizes (numba promotes ``1 - x`` with
  a float32 ``x`` to float64 otherwise).  ``sqrt``, small integer powers,
  ``Max``/``Min``, ``sign`` and ``Piecewise`` are printed explicitly; ``Piecewise``
  becomes a conditional expression, never ``np.select`` (which evaluates every
  branch).
* :class:`ScalarPrinter` prints the per-step scalar function: plain Python float64
  with the ``math`` module, run once per step, no NumPy, no SymPy.

Names come from a mapping ``Symbol -> identifier`` built by :mod:`.names`; a symbol
missing from it is an error (printers never invent identifiers from user text).
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

_FLOAT_TYPES = {"float32": "np.float32", "float64": "np.float64"}


class _Base(PythonCodePrinter):
    _default_settings = {**PythonCodePrinter._default_settings, "strict": True,
                         "fully_qualified_modules": False}

    def __init__(self, names: dict, settings=None):
        super().__init__(settings or {})
        self.names = names

    def _print_Symbol(self, expr):
        try:
            return self.names[expr]
        except KeyError:
            raise ValueError(f"symbol {expr.name!r} has no generated identifier") from None

    _print_Dummy = _print_Symbol

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

    def _nested(self, fn, args):
        args = [self._print(a) for a in args]
        out = args[0]
        for a in args[1:]:
            out = f"{fn}({out}, {a})"
        return out

    def _print_Max(self, expr):
        return self._nested("max", expr.args)

    def _print_Min(self, expr):
        return self._nested("min", expr.args)

    def _print_Abs(self, expr):
        return f"abs({self._print(expr.args[0])})"

    def _print_Mod(self, expr):
        # Always parenthesised: ``%`` binds like ``*``, so ``a*b % c`` would read as ``(a*b) % c``.
        a, b = expr.args
        return f"({self._paren(a)} % {self._paren(b)})"


class ScalarPrinter(_Base):
    """Per-step scalar code: Python floats (IEEE double) and ``math``."""

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

    def _print_sign(self, expr):
        x = self._print(expr.args[0])
        return f"(math.copysign(1.0, {x}) if {x} != 0.0 else 0.0)"

    def _print_Heaviside(self, expr):
        x = self._print(expr.args[0])
        h0 = self._print(expr.args[1]) if len(expr.args) > 1 else "0.5"
        return f"(1.0 if {x} > 0.0 else ({h0} if {x} == 0.0 else 0.0))"

    def _fn(name):
        def printer(self, expr):
            return f"math.{name}({', '.join(self._print(a) for a in expr.args)})"
        return printer

    _print_exp = _fn("exp")
    _print_log = _fn("log")
    _print_tanh = _fn("tanh")
    _print_sinh = _fn("sinh")
    _print_cosh = _fn("cosh")
    _print_sin = _fn("sin")
    _print_cos = _fn("cos")
    _print_atan = _fn("atan")
    _print_erf = _fn("erf")
    del _fn

    def _print_floor(self, expr):
        return f"float(math.floor({self._print(expr.args[0])}))"

    def _print_ceiling(self, expr):
        return f"float(math.ceil({self._print(expr.args[0])}))"


class KernelPrinter(_Base):
    """Per-element code for a Numba kernel whose arrays have dtype ``dtype``.

    With ``vector_math``, ``exp(x)``, ``tanh(x)`` and ``x**(1/3)`` print as calls to the
    vectorizable helpers of ``templates/_vecmath.jinja`` (``_vexp_f32``, ``_vcbrt_f64`` ...), and
    :attr:`helpers` collects the ones used, so the module template emits only those.
    """

    def __init__(self, names: dict, dtype: str, vector_math: bool = False):
        super().__init__(names)
        if dtype not in _FLOAT_TYPES:
            raise ValueError(f"unsupported kernel dtype {dtype!r}")
        self.dtype = dtype
        self.ctor = _FLOAT_TYPES[dtype]
        self.vector_math = vector_math
        self.helpers: set = set()

    def _helper(self, fn: str, arg) -> str:
        self.helpers.add(fn)
        return f"_v{fn}_{self.dtype.replace('float', 'f')}({self._print(arg)})"

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

    def _print_sign(self, expr):
        return f"np.sign({self._print(expr.args[0])})"

    def _print_Heaviside(self, expr):
        x = self._print(expr.args[0])
        h0 = self._print(expr.args[1]) if len(expr.args) > 1 else self.const(0.5)
        return f"({self.const(1)} if {x} > {self.const(0)} else ({h0} if {x} == {self.const(0)} else {self.const(0)}))"

    def _print_erf(self, expr):
        # math.erf returns a double; cast back so a float32 kernel stays float32.
        return f"{self.ctor}(math.erf({self._print(expr.args[0])}))"

    def _fn(name):
        def printer(self, expr):
            return f"np.{name}({', '.join(self._print(a) for a in expr.args)})"
        return printer

    _print_log = _fn("log")
    _print_sinh = _fn("sinh")
    _print_cosh = _fn("cosh")
    _print_sin = _fn("sin")
    _print_cos = _fn("cos")
    _print_atan = _fn("arctan")

    def _print_exp(self, expr):
        if self.vector_math:
            return self._helper("exp", expr.args[0])
        return f"np.exp({self._print(expr.args[0])})"

    def _print_tanh(self, expr):
        if self.vector_math:
            return self._helper("tanh", expr.args[0])
        return f"np.tanh({self._print(expr.args[0])})"

    _print_floor = _fn("floor")
    _print_ceiling = _fn("ceil")
    del _fn
