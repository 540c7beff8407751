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
* ``Eigenbasis(S, Q, v, first, limit)``, the eigenvectors of a symmetric ``S`` by descending
  eigenvalue (SOAP's rotation): where ``first`` holds, exactly (LAPACK ``?syevd``); else one
  power-iteration step from the last basis ``Q``, ``QR(S Q Π)`` (``?gemm``, ``?geqrf``, ``?orgqr``),
  with ``Π`` the columns sorted by their estimated eigenvalues ``diag(Qᵀ S Q)`` and the elementwise
  state ``v`` (read as ``rows × cols``) reordered along ``S``'s side by the same ``Π``; a side
  longer than ``limit`` (a hyperparameter expression; default unbounded) is refused before the step;
* ``value = A G B`` (``A``, ``B`` states or their transposes, either may be absent): two ``?gemm``;
  ``RMSNormalized(A G B, ε, when)`` divides it by its root mean square over the tensor plus ε
  (one more pass over the value) where ``when`` holds.

A rule may hold several ``Preconditioned`` nodes (SOAP projects the gradient, the first moment
and the update); a node's value may read the states another node declares.  A state marked
``at_end`` is updated after the rule's last update (SOAP refreshes its statistics and basis after
the param), from its node's ``G``.  The states' initial values are ``c·I`` or the zero matrix
(``c`` a hyperparameter expression); ``key`` is the state's name in ``state_dict()`` and checkpoints.

A node built with ``every_axis=True`` preconditions every axis of an N-d param in turn, as
pytorch-optimizer's Shampoo and SOAP do: ``G`` (``rows × cols``) stands for the mode-k unfolding
``G_(k)`` (``rows`` the length ``d_k`` of axis k, ``cols`` the product of the others), its states
are ``rows × rows`` and kept once per axis (keys ``<key>_0``, ``<key>_1``, …), and its value is
``A G`` (``A`` a state or its transpose), the mode-k product applied for k = 0, 1, … (a 2-D
param: ``A₀ G A₁ᵀ``).  ``n_axes`` (the param's number of axes) may appear in a root order (Shampoo's
``L_k^{-1/(2n)}``).  ``keep``, a condition of ``rows`` (the axis length), ``n_axes`` and the
hyperparameters, says which axes keep states (fixed when the optimizer is built); an axis without
them is left as it is (SOAP's ``max_precondition_dim`` and ``precondition_1d``).  ``merge``, a
scalar expression of hyperparameters, merges adjacent axes first where it is positive: the param is
read with pytorch-optimizer's ``merge_small_dims(shape, merge)`` (SOAP's ``merge_dims``).  A 0-D
param has no axes: its value is ``G``.  The nodes of one rule all read the param one way.
"""

from __future__ import annotations

import sympy as sp
from sympy.core.symbol import Str
from sympy.logic.boolalg import Boolean

from .matrix import cols, rows
from .metadata import RuleError

__all__ = ["Eigenbasis", "InverseRoot", "MatrixState", "Preconditioned", "RMSNormalized", "matrix_states_of", "n_axes",
           "preconditioners_in"]

#: The number of axes of the param (per tensor): in the root order of an ``every_axis`` node.
n_axes = sp.Symbol("n_axes", nonnegative=True, integer=True)


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
        root = printer._print(self.root)
        return rf"{printer._print(self.base)}^{{-1/{root if self.root.is_Atom else f'({root})'}}}"

    def _sympystr(self, printer):
        return f"InverseRoot({printer._print(self.base)}, {printer._print(self.root)})"


class Eigenbasis(sp.MatrixExpr):
    """The eigenvectors of the symmetric matrix state ``S`` as columns, by descending eigenvalue:
    exactly where ``first`` holds, else ``QR(S Q Π)`` from the last basis ``Q`` (one power-iteration
    step, columns ``Π``-sorted by ``diag(Qᵀ S Q)``), reordering the elementwise state ``v`` by ``Π``
    along ``S``'s side.  A side longer than ``limit`` is refused (before the step changes anything)."""

    def __new__(cls, base, basis, reorder, first, limit=sp.oo):
        for m, what in ((base, "statistic"), (basis, "basis")):
            if not isinstance(m, sp.MatrixSymbol) or m.shape[0] != m.shape[1]:
                raise RuleError(f"Eigenbasis: the {what} must be a square MatrixSymbol (a matrix state), got {m!r}")
        if base.shape != basis.shape:
            raise RuleError("Eigenbasis: the statistic and the basis must have the same shape")
        if not isinstance(reorder, sp.Symbol):
            raise RuleError(f"Eigenbasis: the reordered state must be an elementwise state symbol, got {reorder!r}")
        first = sp.sympify(first)
        if not isinstance(first, Boolean):
            raise RuleError("Eigenbasis: the exact-eigendecomposition condition must be a SymPy boolean")
        limit = sp.sympify(limit)
        if isinstance(limit, sp.MatrixExpr) or not isinstance(limit, sp.Expr):
            raise RuleError("Eigenbasis: the size limit must be a scalar expression")
        return sp.Basic.__new__(cls, base, basis, reorder, first, limit)

    base = property(lambda self: self.args[0])
    basis = property(lambda self: self.args[1])
    reorder = property(lambda self: self.args[2])
    first = property(lambda self: self.args[3])
    limit = property(lambda self: self.args[4])

    @property
    def shape(self):
        return self.base.shape

    @property
    def free_symbols(self):
        return {self.reorder} | self.first.free_symbols | self.limit.free_symbols

    def _latex(self, printer, exp=None):
        s, q = printer._print(self.base), printer._print(self.basis)
        return (rf"\operatorname{{eig}}\left({s}\right) \text{{ if }} {printer._print(self.first)}"
                rf" \text{{, else }} \operatorname{{QR}}\left({s} {q}\right)")

    def _sympystr(self, printer):
        return "Eigenbasis({})".format(", ".join(printer._print(a) for a in self.args))


class RMSNormalized(sp.MatrixExpr):
    """``X / (√mean(X²) + ε)`` where ``when`` holds, else ``X``: a node's value divided by its root
    mean square over the whole tensor (SOAP's ``normalize_gradient``)."""

    def __new__(cls, arg, eps, when=sp.true):
        if not isinstance(arg, sp.MatrixExpr):
            raise RuleError("RMSNormalized: the argument must be a matrix expression (a node's value)")
        eps = sp.sympify(eps)
        if isinstance(eps, sp.MatrixExpr) or not isinstance(eps, sp.Expr):
            raise RuleError("RMSNormalized: ε must be a scalar expression")
        when = sp.true if when is True else sp.sympify(when)
        if not isinstance(when, Boolean):
            raise RuleError("RMSNormalized: the condition must be a SymPy boolean")
        return sp.Basic.__new__(cls, arg, eps, when)

    arg = property(lambda self: self.args[0])
    eps = property(lambda self: self.args[1])
    when = property(lambda self: self.args[2])

    @property
    def shape(self):
        return self.arg.shape

    @property
    def free_symbols(self):
        return self.arg.free_symbols | self.eps.free_symbols | self.when.free_symbols

    def _latex(self, printer, exp=None):
        x = printer._print(self.arg)
        cond = "" if self.when == sp.true else rf" \text{{ if }} {printer._print(self.when)}"
        return (rf"\frac{{{x}}}{{\sqrt{{\operatorname{{mean}}\left(\left({x}\right)^{{2}}\right)}} + "
                rf"{printer._print(self.eps)}}}{cond}")

    def _sympystr(self, printer):
        return "RMSNormalized({})".format(", ".join(printer._print(a) for a in self.args))


class MatrixState(sp.Basic):
    """A square matrix state ``sym`` of one tensor: initial value ``init`` (``c·I`` or zero),
    update ``update`` applied when ``when`` holds (after the rule's last update if ``at_end``),
    public name ``key``."""

    def __new__(cls, sym, init, update, *, key: str, when=sp.true, at_end: bool = False):
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
        return sp.Basic.__new__(cls, sym, init, update, when, Str(key), sp.true if at_end else sp.false)

    sym = property(lambda self: self.args[0])
    init = property(lambda self: self.args[1])
    update = property(lambda self: self.args[2])
    when = property(lambda self: self.args[3])
    key = property(lambda self: self.args[4].name)
    at_end = property(lambda self: bool(self.args[5]))

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
    bound to the matrix of the elementwise ``start`` values.  ``states`` may be empty when
    ``value`` reads the states of another node of the rule.  ``every_axis``: ``var`` is the
    unfolding along each axis in turn and ``keep`` says which axes keep states (module docstring)."""

    is_real = True
    is_commutative = True

    def __new__(cls, var, start, states, value, *, every_axis: bool = False, keep=sp.true, merge=0):
        if type(var) is not sp.MatrixSymbol or var.shape != (rows, cols):
            raise RuleError(f"Preconditioned: the variable must be a MatrixSymbol of shape (rows, cols), got {var!r}")
        start = sp.sympify(start)
        if not isinstance(start, sp.Expr) or isinstance(start, sp.MatrixExpr):
            raise RuleError("Preconditioned: the start value must be an elementwise (scalar) expression")
        states = tuple(states)
        if not all(isinstance(s, MatrixState) for s in states):
            raise RuleError("Preconditioned: states must be a sequence of MatrixState")
        if len({s.sym for s in states}) != len(states) or len({s.key for s in states}) != len(states):
            raise RuleError("Preconditioned: each matrix state (and its key) appears once")
        if not isinstance(value, sp.MatrixExpr) or value.shape != (rows, cols):
            raise RuleError("Preconditioned: the value must be a (rows, cols) matrix expression")
        keep = sp.true if keep is True else sp.sympify(keep)
        if not isinstance(keep, Boolean):
            raise RuleError("Preconditioned: keep must be a SymPy boolean (of rows, n_axes and hyperparameters)")
        product = value.arg if isinstance(value, RMSNormalized) else value
        if every_axis:
            if any(s.sym.shape != (rows, rows) for s in states):
                raise RuleError("Preconditioned(every_axis=True): the states are rows × rows (one per axis)")
            if not (isinstance(product, sp.MatMul) and len(product.args) == 2 and product.args[1] == var):
                raise RuleError(f"Preconditioned(every_axis=True): the value must be A {var.name} (the mode "
                                f"product of each axis), got {sp.sstr(value)}")
        merge = sp.sympify(merge)
        if isinstance(merge, sp.MatrixExpr) or not isinstance(merge, sp.Expr) or merge.has(rows, cols, n_axes):
            raise RuleError("Preconditioned: merge must be a scalar expression of hyperparameters")
        if not every_axis and merge != 0:
            raise RuleError("Preconditioned: merge is for every_axis nodes")
        if not every_axis and keep != sp.true:
            raise RuleError("Preconditioned: keep is for every_axis nodes")
        if not every_axis and any(s.update.has(n_axes) for s in states):
            raise RuleError("Preconditioned: n_axes is for every_axis nodes")
        return sp.Basic.__new__(cls, var, start, sp.Tuple(*states), value, sp.true if every_axis else sp.false, keep,
                                merge)

    var = property(lambda self: self.args[0])
    start = property(lambda self: self.args[1])
    states = property(lambda self: tuple(self.args[2]))
    value = property(lambda self: self.args[3])
    every_axis = property(lambda self: bool(self.args[4]))
    keep = property(lambda self: self.args[5])
    merge = property(lambda self: self.args[6])

    @property
    def free_symbols(self):
        # The variable, the states and the shape are bound inside; conditions and coefficients are not.
        bound = {self.var, rows, cols, n_axes, *(s.sym for s in self.states)}
        free = set(self.start.free_symbols) | self.keep.free_symbols | self.merge.free_symbols
        for s in self.states:
            for part in (s.init, s.update, s.when):
                free |= part.free_symbols
        free |= self.value.free_symbols
        # another node's states read by the value are bound by that node
        free -= {m for m in self.value.atoms(sp.MatrixSymbol)}
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


def matrix_states_of(nodes) -> tuple:
    """The matrix states declared by ``nodes`` (:class:`Preconditioned`), in order."""
    return tuple(st for node in nodes for st in node.states)
