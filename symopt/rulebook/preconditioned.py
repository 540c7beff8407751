"""Kronecker-factored preconditioning inside a rule: matrix-shaped states and matrix inverse roots.

Shampoo (Gupta, Koren & Singer 2018) keeps, for a ``rows × cols`` gradient matrix ``G``, two
statistics ``L ← L + G Gᵀ`` (rows × rows) and ``R ← R + Gᵀ G`` (cols × cols) and steps along
``L^{-1/4} G R^{-1/4}``.  A rule writes it with SymPy's matrix expressions::

    G = sp.MatrixSymbol("G", rows, cols)          # the matrix of the start values
    L = sp.MatrixSymbol("L", rows, rows)          # states: symmetric, one per tensor
    P = Preconditioned(G, u,                      # start: an elementwise expression
                       [MatrixState(L, eps * sp.Identity(rows), L + G * G.T, key="pre_cond_0"),
                        MatrixState(H, sp.ZeroMatrix(rows, rows), InverseRoot(L, 4), key="inv_pre_cond_0",
                                    when=sp.Eq(sp.Mod(t, k), 0))],
                       H * G)                     # value: a product of states around G

``Preconditioned`` is the element of ``value`` at the position being updated; the updates after
it use it like any per-element value.  Its states are updated in order, each when its condition
(of ``t`` and hyperparameters; always by default) holds, before ``value`` is formed.  What the
planner maps to BLAS/LAPACK (``codegen/plan_preconditioned.py``) is:

* a statistic ``β S + α G Gᵀ`` or ``β S + α Gᵀ G`` (α, β hyperparameter expressions): one ``?syrk``;
* ``InverseRoot(S, p)``, ``S^{-1/p}`` of a symmetric positive definite ``S``: its symmetric
  eigendecomposition ``S = V Λ Vᵀ`` (LAPACK ``?syevd``), then ``W = V Λ^{-1/(2p)}`` and
  ``S^{-1/p} = W Wᵀ`` (one ``?syrk``); an eigenvalue ≤ 0 gives inf/NaN, as the SVD of
  pytorch-optimizer's ``compute_power_svd`` gives for a zero singular value;
* ``value = A G B`` (``A``, ``B`` states, either may be absent): two ``?gemm``.

The states' initial values are ``c·I`` or the zero matrix (``c`` a hyperparameter expression);
``key`` is the state's name in ``state_dict()`` and checkpoints.
"""

from __future__ import annotations

import sympy as sp
from sympy.core.symbol import Str
from sympy.logic.boolalg import Boolean

from .matrix import cols, rows
from .metadata import RuleError

__all__ = ["InverseRoot", "MatrixState", "Preconditioned", "preconditioners_in"]


class InverseRoot(sp.MatrixExpr):
    """``A^{-1/p}`` of a symmetric positive definite matrix ``A`` (by its eigendecomposition)."""

    def __new__(cls, base, p):
        if not isinstance(base, sp.MatrixSymbol) or base.shape[0] != base.shape[1]:
            raise RuleError(f"InverseRoot: the base must be a square MatrixSymbol (a matrix state), got {base!r}")
        p = sp.sympify(p)
        if isinstance(p, sp.MatrixExpr) or not isinstance(p, sp.Expr):
            raise RuleError("InverseRoot: the root order must be a scalar expression")
        return sp.Basic.__new__(cls, base, p)

    @property
    def base(self):
        return self.args[0]

    @property
    def root(self):
        return self.args[1]

    @property
    def shape(self):
        return self.base.shape

    def _latex(self, printer, exp=None):
        return rf"{printer._print(self.base)}^{{-1/{printer._print(self.root)}}}"

    def _sympystr(self, printer):
        return f"InverseRoot({printer._print(self.base)}, {printer._print(self.root)})"


class MatrixState(sp.Basic):
    """A square matrix state ``sym`` of one tensor: initial value ``init`` (``c·I`` or zero),
    update ``update`` applied when ``when`` holds, public name ``key``."""

    def __new__(cls, sym, init, update, *, key: str, when=sp.true):
        if type(sym) is not sp.MatrixSymbol or sym.shape not in ((rows, rows), (cols, cols)):
            raise RuleError(f"MatrixState: the state must be a MatrixSymbol of shape (rows, rows) or (cols, cols), "
                            f"got {sym!r}")
        init = sp.sympify(init)
        if not isinstance(init, sp.MatrixExpr) or init.shape != sym.shape:
            raise RuleError(f"MatrixState {sym.name}: the initial value must be a {sym.shape} matrix expression "
                            f"(c * Identity or ZeroMatrix)")
        if not isinstance(update, sp.MatrixExpr) or update.shape != sym.shape:
            raise RuleError(f"MatrixState {sym.name}: the update must be a {sym.shape} matrix expression")
        if not isinstance(key, str) or not key.isidentifier():
            raise RuleError(f"MatrixState {sym.name}: key must be an identifier, got {key!r}")
        when = sp.true if when is True else sp.sympify(when)
        if not isinstance(when, Boolean):
            raise RuleError(f"MatrixState {sym.name}: the condition must be a SymPy boolean")
        return sp.Basic.__new__(cls, sym, init, update, when, Str(key))

    sym = property(lambda self: self.args[0])
    init = property(lambda self: self.args[1])
    update = property(lambda self: self.args[2])
    when = property(lambda self: self.args[3])
    key = property(lambda self: self.args[4].name)

    def init_diagonal(self) -> sp.Expr:
        """``c`` of the initial value ``c·I`` (0 for the zero matrix)."""
        init = self.init
        if isinstance(init, sp.ZeroMatrix):
            return sp.Integer(0)
        coeff, mats = init.as_coeff_mmul()
        if len(mats.args) == 1 and isinstance(mats.args[0], sp.Identity):
            return sp.sympify(coeff)
        raise RuleError(f"MatrixState {self.sym.name}: the initial value must be c * Identity or ZeroMatrix, "
                        f"got {sp.sstr(init)}")


class Preconditioned(sp.Expr):
    """The element of ``value`` after the matrix ``states`` are updated; ``var`` (rows × cols) is
    bound to the matrix of the elementwise ``start`` values."""

    is_real = True
    is_commutative = True

    def __new__(cls, var, start, states, value):
        if type(var) is not sp.MatrixSymbol or var.shape != (rows, cols):
            raise RuleError(f"Preconditioned: the variable must be a MatrixSymbol of shape (rows, cols), got {var!r}")
        start = sp.sympify(start)
        if not isinstance(start, sp.Expr) or isinstance(start, sp.MatrixExpr):
            raise RuleError("Preconditioned: the start value must be an elementwise (scalar) expression")
        states = tuple(states)
        if not states or not all(isinstance(s, MatrixState) for s in states):
            raise RuleError("Preconditioned: states must be a non-empty sequence of MatrixState")
        if len({s.sym for s in states}) != len(states) or len({s.key for s in states}) != len(states):
            raise RuleError("Preconditioned: each matrix state (and its key) appears once")
        if not isinstance(value, sp.MatrixExpr) or value.shape != (rows, cols):
            raise RuleError("Preconditioned: the value must be a (rows, cols) matrix expression")
        return sp.Basic.__new__(cls, var, start, sp.Tuple(*states), value)

    var = property(lambda self: self.args[0])
    start = property(lambda self: self.args[1])
    states = property(lambda self: tuple(self.args[2]))
    value = property(lambda self: self.args[3])

    @property
    def free_symbols(self):
        # The variable, the states and the shape are bound inside; conditions and coefficients are not.
        bound = {self.var, rows, cols, *(s.sym for s in self.states)}
        free = set(self.start.free_symbols)
        for s in self.states:
            for part in (s.init, s.update, s.when):
                free |= part.free_symbols
        free |= self.value.free_symbols
        return free - bound

    def _latex(self, printer, exp=None):
        text = printer._print(self.value)
        return text if exp is None else rf"\left({text}\right)^{{{exp}}}"

    def _sympystr(self, printer):
        return "Preconditioned({})".format(", ".join(printer._print(a) for a in self.args))


def preconditioners_in(expr) -> list:
    """The :class:`Preconditioned` nodes of ``expr``, in preorder."""
    if not isinstance(expr, sp.Basic):
        return []
    return [n for n in sp.preorder_traversal(expr) if isinstance(n, Preconditioned)]
