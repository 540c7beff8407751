"""Matrix expressions inside a rule: a ≥2-D param read as a matrix, and a fixed-count iteration.

An elementwise rule sees one value per element.  Muon's orthogonalization is not
elementwise: it reads the whole update as a matrix and runs a few Newton–Schulz steps
``X ← aX + (b XXᵀ + c (XXᵀ)²) X``.  A rule writes it with SymPy's matrix expressions::

    X = sp.MatrixSymbol("X", rows, cols)             # the iteration variable
    O = Iterate(X, a*X + (b*X*X.T + c*(X*X.T)**2)*X,   # body: a matrix expression in X
                u / Max(frobenius_norm(u), eps),     # start: an elementwise expression
                ns_steps)                            # count: hyperparameters only

``Iterate`` is the element of the final matrix at the position being updated: the
updates after it use ``O`` like any per-element value.  The param of shape
``(d0, d1, ..., dk)`` is read as the ``rows × cols`` matrix ``d0 × (d1 ⋯ dk)`` (conv
kernels as in Keller Jordan's Muon: output channels × the rest); :data:`rows` and
:data:`cols` may appear in per-tensor scalars (Muon's learning-rate adjustment).

The body must be an *odd matrix polynomial* ``q0 X + Σ_k q_k (XXᵀ)^k X`` with
coefficients in hyperparameters: that is what the planner turns into BLAS calls
(``codegen/plan_matrix.py``), and what makes the result independent of whether it
works on ``X`` or ``Xᵀ`` (``p(XXᵀ)X = X p(XᵀX)``), so it always forms the smaller Gram
matrix.  The start value is an elementwise expression times array-free factors; a
factor may hold reductions (:func:`frobenius_norm`).
"""

from __future__ import annotations

import sympy as sp

from .metadata import RuleError
from .reduction import TensorSum

__all__ = ["Iterate", "rows", "cols", "frobenius_norm", "SHAPE_SYMBOLS", "iterations_in"]

#: Rows and columns of the param's matrix view (per tensor; usable in array-free factors).
rows = sp.Symbol("rows", positive=True, integer=True)
cols = sp.Symbol("cols", positive=True, integer=True)
SHAPE_SYMBOLS = (rows, cols)


def frobenius_norm(x) -> sp.Expr:
    """‖x‖_F = √(Σ x²) over the tensor's elements."""
    return sp.sqrt(TensorSum(x**2))


class Iterate(sp.Expr):
    """``count`` steps of ``var ← body(var)`` from ``start``; as a value, the final matrix's element.

    ``var`` is a ``MatrixSymbol`` (bound inside ``body``, like a lambda's argument),
    ``body`` a matrix expression in ``var``, ``start`` an elementwise expression, ``count``
    a non-negative integer-valued expression of hyperparameters.
    """

    is_real = True
    is_commutative = True

    def __new__(cls, var, body, start, count):
        if type(var) is not sp.MatrixSymbol:
            raise RuleError(f"Iterate: the iteration variable must be a sympy MatrixSymbol, got {type(var).__name__}")
        if not isinstance(body, sp.MatrixExpr):
            raise RuleError(f"Iterate: the body must be a matrix expression in {var.name}, got {type(body).__name__}")
        start, count = sp.sympify(start), sp.sympify(count)
        if not isinstance(start, sp.Expr) or isinstance(start, sp.MatrixExpr):
            raise RuleError("Iterate: the start value must be an elementwise (scalar) expression")
        return sp.Basic.__new__(cls, var, body, start, count)

    @property
    def var(self):
        return self.args[0]

    @property
    def body(self):
        return self.args[1]

    @property
    def start(self):
        return self.args[2]

    @property
    def count(self):
        return self.args[3]

    @property
    def free_symbols(self):
        # The variable (and its shape) is bound inside the body.
        bound = {self.var, *self.var.free_symbols}
        return (self.body.free_symbols - bound) | self.start.free_symbols | self.count.free_symbols

    def _latex(self, printer, exp=None):
        # The value: the variable after `count` steps (display.py writes the iteration itself).
        text = rf"{printer._print(self.var)}_{{{printer._print(self.count)}}}"
        return text if exp is None else rf"\left({text}\right)^{{{exp}}}"

    def _sympystr(self, printer):
        return "Iterate({})".format(", ".join(printer._print(a) for a in self.args))


def iterations_in(expr) -> list:
    """The :class:`Iterate` nodes of ``expr``, in preorder."""
    if not isinstance(expr, sp.Basic):
        return []
    return [n for n in sp.preorder_traversal(expr) if isinstance(n, Iterate)]
