"""The plan of a preconditioned matrix rule (:class:`~symopt.rulebook.preconditioned.Preconditioned`
nodes): element passes around BLAS/LAPACK calls on per-tensor matrix states.

Everything is SymPy, as in :mod:`.plan_matrix`.  A rule with ``K`` nodes (in update order) steps
one ``rows × cols`` tensor in ``K + 1`` element passes, each followed by a matrix stage:

1. *pass k*, one loop over the elements: the updates from node ``k − 1``'s on (element
   temporaries, stores of the param and states) and node ``k``'s start value into its workspace
   ``work<k>``;
2. *stage k* (k < K): node ``k``'s matrix states in order, each when its condition holds (a
   per-step flag), then its value ``A G B`` into ``result<k>``:

   * ``β S + α G Gᵀ`` / ``β S + α Gᵀ G``: ``?syrk`` into ``S`` (upper triangle, then mirrored);
   * ``InverseRoot(S', p)``: ``?syevd`` of ``S'`` (``V Λ Vᵀ``), ``W = V Λ^{-1/(2p)}``, ``S = W Wᵀ``
     by ``?syrk``;
   * ``Eigenbasis(S', Q, v, first, limit)``: ``?syevd`` of ``S'`` where ``first`` holds, else
     ``QR(S' Q Π)`` (``?gemm``, ``?geqrf``, ``?orgqr``) and the state ``v`` reordered by ``Π``
     (a side longer than ``limit`` is refused by the runtime before the step);
   * the value ``A G B`` (``A``, ``B`` states or transposes; either may be absent; ``RMSNormalized``:
     then divided by its root mean square plus ε where a flag holds) by two ``?gemm``:
     with ``Gᵀ`` the C-order workspace read as a column-major ``cols × rows`` matrix,
     ``(A G B)ᵀ = Bᵀ Gᵀ Aᵀ`` without copies;

3. *stage K*, after the last pass: the states marked ``at_end``, in order.

In a rule of ``every_axis`` nodes (:class:`~symopt.rulebook.preconditioned.Preconditioned`) a
state is a list of matrices, one per kept axis (``side`` ``"axes"``), each operation runs for every
kept axis k on the unfolding ``G_(k)``, and the value ``A G`` is the mode-k product of each axis in
turn; an inverse root's order may hold ``n_axes`` (the coefficients ``(c, e)``: order ``c·n_axes^e``),
and ``keep`` (of the axis length ``rows``, ``n_axes`` and per-step scalars) says which axes keep states.

A pass reads the param, grad and states (stored values are read back as the new values) and the
values ``result<j>`` of earlier nodes through the temporaries that hold them; other temporaries of
an earlier pass are not available.  Per-step scalars (hyperparameters, ``t``, the conditions, the
coefficients and the states' initial diagonals) are hoisted out as in
:func:`~symopt.codegen.plan.make_plan`.
"""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

from ..rulebook.matrix import rows
from ..rulebook.metadata import RuleError
from ..rulebook.preconditioned import Eigenbasis, InverseRoot, Preconditioned, RMSNormalized, n_axes
from ..rulebook.rule import Rule
from .plan import Hoister, PlanSymbol, _rename_scalars
from .plan_matrix import MatrixPass, _straight_line

__all__ = ["MatrixOp", "PreconditionedPlan", "Product", "Stage", "is_preconditioned_rule", "make_preconditioned_plan",
           "result_buffer", "work_buffer"]

_PREFIXES = "vwxyzabcdefghijk"


def work_buffer(k: int) -> PlanSymbol:
    """The workspace that holds node ``k``'s start value (its ``G``)."""
    return PlanSymbol(f"work{k}", real=True)


def result_buffer(k: int) -> PlanSymbol:
    """The buffer that holds node ``k``'s value ``A G B``."""
    return PlanSymbol(f"result{k}", real=True)


class MatrixOp(NamedTuple):
    kind: str               # "gram" (S ← β S + α G Gᵀ or α Gᵀ G), "inverse_root" (S ← source^{-1/p}),
                            # "eigenbasis" (S ← the eigenvectors of source)
    target: int             # the state written
    source: int             # gram: the node whose G it reads; inverse_root, eigenbasis: the state decomposed
    side: str               # "rows" (rows × rows: G Gᵀ), "cols" (cols × cols: Gᵀ G) or "axes" (every kept axis)
    coefficients: tuple     # gram: (α, β); inverse_root: (c, e), the order c·n_axes^e; eigenbasis: (flag of
                            # the exact eigh, size limit)
    when: sp.Basic | None   # per-step flag (1.0 when the update runs), None when always
    reorder: sp.Symbol | None = None   # eigenbasis: the elementwise state reordered with the basis


class Product(NamedTuple):
    left: int | None        # the value A G B: the state index of A (None: absent)
    left_transposed: bool   # A is the transpose of that state
    right: int | None       # ... of B
    right_transposed: bool
    normalize: tuple | None = None   # RMSNormalized: (ε, flag): the value divided by √mean(value²) + ε


class Stage(NamedTuple):
    ops: tuple              # MatrixOp, in order
    product: Product | None  # the node's value (None: the stage after the last pass)


class PreconditionedPlan(NamedTuple):
    rule: Rule
    hyper: tuple            # hyperparameter symbols, in the scalar function's argument order
    state: tuple            # elementwise state symbols, in argument order
    scalars: tuple          # per-step scalars s0..sk
    scalar_temps: tuple     # CSE temporaries of the scalar function
    scalar_exprs: tuple     # expressions of the per-step scalars
    passes: tuple           # K + 1 element passes (plan_matrix.MatrixPass; stores may target work<k>)
    stages: tuple           # K + 1 Stage: stage k runs after pass k
    matrix_states: tuple    # ((key, side, initial diagonal: scalar or number), ...)
    symmetric: tuple        # per matrix state: True when its updates keep it symmetric
    op_count: int
    every_axis: bool        # the nodes precondition every axis (states per kept axis), else the d0 × (d1⋯) matrix
    keep: sp.Basic          # every_axis: which axes keep states (a boolean of rows, n_axes, s<k>); else true
    merge: sp.Basic         # every_axis: merge_small_dims' limit (a scalar s<k> or a number; ≤ 0: no merging)

    @property
    def buffers(self) -> tuple:
        """The flat buffers of a step: work0, result0, work1, result1, ..."""
        return tuple(b for k in range(len(self.stages) - 1) for b in (work_buffer(k), result_buffer(k)))


def is_preconditioned_rule(rule: Rule) -> bool:
    return any(rhs.has(Preconditioned) for _, rhs in rule.updates)


def _nodes(rule: Rule) -> list:
    """``(update index, node)`` of each Preconditioned node, at most one per update."""
    found = []
    for k, (_, rhs) in enumerate(rule.updates):
        nodes = rhs.atoms(Preconditioned)
        if len(nodes) > 1:
            raise RuleError(f"rule {rule.name!r}: one Preconditioned node per update")
        if nodes:
            found.append((k, next(iter(nodes))))
    if not found:
        raise RuleError(f"rule {rule.name!r} holds no Preconditioned node")
    return found


def _gram_op(k, st, var, node_index, scalar) -> MatrixOp:
    """``β S + α G Gᵀ`` (or ``Gᵀ G``) read off ``st.update``, else RuleError."""
    side = "rows" if st.sym.shape[0] == rows else "cols"
    gram = var * var.T if side == "rows" else var.T * var
    alpha, beta = sp.Integer(0), sp.Integer(0)
    expanded = sp.expand(st.update.doit())
    for term in (expanded.args if isinstance(expanded, sp.MatAdd) else (expanded,)):
        coeff, mats = term.as_coeff_mmul()
        mats = sp.MatMul(*mats.args).doit() if len(mats.args) > 1 else mats.args[0]
        if mats == st.sym:
            beta += coeff
        elif mats == gram:
            alpha += coeff
        else:
            raise RuleError(f"matrix state {st.sym.name}: the term {sp.sstr(term)} is neither a multiple of "
                            f"{st.sym.name} nor of {sp.sstr(gram)} (a statistic is β S + α {sp.sstr(gram)})")
    return MatrixOp("gram", k, node_index, side, (scalar(alpha), scalar(beta)), None)


def _value_product(value, var, index) -> Product:
    """The factors of ``value = A G B`` (A, B states or their transposes; None where absent)."""
    factors = list(value.args) if isinstance(value, sp.MatMul) else [value]
    if any(not isinstance(f, sp.MatrixExpr) for f in factors) or factors.count(var) != 1:
        raise RuleError(f"Preconditioned value {sp.sstr(value)}: must be a product A {var.name} B of matrix states "
                        f"around {var.name} (no scalar factors: scale the update outside)")
    pos = factors.index(var)
    left, right = factors[:pos], factors[pos + 1:]
    strip = lambda f: (f.arg, True) if isinstance(f, sp.Transpose) else (f, False)
    if len(left) > 1 or len(right) > 1 or any(strip(f)[0] not in index for f in left + right):
        raise RuleError(f"Preconditioned value {sp.sstr(value)}: at most one matrix state (or its transpose) on "
                        f"each side of {var.name}")
    (a, at), (b, bt) = (strip(left[0]) if left else (None, False)), (strip(right[0]) if right else (None, False))
    return Product(index.get(a), at, index.get(b), bt)


def _element_pass(temps, stores, reads_from) -> MatrixPass:
    used = set()
    for e in [*(e for _, e in temps), *(e for _, e in stores)]:
        used |= e.free_symbols
    return MatrixPass(tuple(temps), tuple(stores), (), tuple(s for s in reads_from if s in used))


def make_preconditioned_plan(rule: Rule) -> PreconditionedPlan:
    """Build the element passes, the matrix stages and the values of ``rule`` (module docstring)."""
    nodes = _nodes(rule)
    every_axis = nodes[0][1].every_axis
    if any((node.every_axis, node.keep, node.merge) != (every_axis, nodes[0][1].keep, nodes[0][1].merge)
           for _, node in nodes):
        raise RuleError(f"rule {rule.name!r}: its Preconditioned nodes read the param one way (every_axis, "
                        f"keep and merge alike)")
    fixed = (rule.param, rule.grad, *rule.state)
    works = [work_buffer(k) for k in range(len(nodes))]
    results = [result_buffer(k) for k in range(len(nodes))]
    hoist = Hoister({*fixed, *works, *results})

    def scalar(e):
        e = sp.sympify(e)
        return e if e.is_Number else hoist.scalar(e)

    # The matrix states of every node, indexed in declaration order.
    states = [(node_k, st) for node_k, (_, node) in enumerate(nodes) for st in node.states]
    index = {st.sym: j for j, (_, st) in enumerate(states)}
    if len(index) != len(states) or len({st.key for _, st in states}) != len(states):
        raise RuleError(f"rule {rule.name!r}: each matrix state (and its key) is declared by one node")
    symmetric = [not isinstance(st.update, Eigenbasis) for _, st in states]
    ops_of: list = [[] for _ in range(len(nodes) + 1)]
    matrix_states = []
    for j, (node_k, st) in enumerate(states):
        node = nodes[node_k][1]
        side = "axes" if every_axis else "rows" if st.sym.shape[0] == rows else "cols"
        matrix_states.append((st.key, side, scalar(st.init_diagonal())))
        upd = st.update
        if isinstance(upd, (InverseRoot, Eigenbasis)):
            source = upd.base
            if source not in index or source.shape != st.sym.shape or not symmetric[index[source]]:
                raise RuleError(f"matrix state {st.sym.name}: {type(upd).__name__} of {source.name}, which is not "
                                f"a symmetric matrix state of the same shape")
            if isinstance(upd, InverseRoot):
                c, e = upd.root, sp.Integer(0)
                if c.has(n_axes):
                    c, e = sp.simplify(c / n_axes), sp.Integer(1)
                    if c.has(n_axes):
                        raise RuleError(f"matrix state {st.sym.name}: the root order {sp.sstr(upd.root)} is not "
                                        f"c · n_axes (c free of n_axes)")
                op = MatrixOp("inverse_root", j, index[source], side, (scalar(c), e), None)
            else:
                if upd.basis != st.sym:
                    raise RuleError(f"matrix state {st.sym.name}: Eigenbasis continues from its own last basis "
                                    f"{st.sym.name}, got {upd.basis.name}")
                if upd.reorder not in rule.state:
                    raise RuleError(f"matrix state {st.sym.name}: Eigenbasis reorders an elementwise state, "
                                    f"{upd.reorder} is not one")
                if every_axis and upd.limit != sp.oo:
                    raise RuleError(f"matrix state {st.sym.name}: an every_axis node limits the rotated axes by "
                                    f"its keep condition, not by an Eigenbasis size limit")
                flag = scalar(sp.Piecewise((sp.Integer(1), upd.first), (sp.Integer(0), True)))
                limit = sp.Float(1e300) if upd.limit == sp.oo else scalar(upd.limit)
                op = MatrixOp("eigenbasis", j, index[source], side, (flag, limit), None, upd.reorder)
        else:
            op = _gram_op(j, st, node.var, node_k, scalar)._replace(side=side)
        when = None if st.when == sp.true else scalar(sp.Piecewise((sp.Integer(1), st.when), (sp.Integer(0), True)))
        ops_of[len(nodes) if st.at_end else node_k].append(op._replace(when=when))
    products = []
    for _, node in nodes:
        value, normalize = node.value, None
        if isinstance(value, RMSNormalized):    # (ε, flag): the value divided by √mean(value²) + ε
            normalize = (scalar(value.eps), scalar(sp.Piecewise((sp.Integer(1), value.when), (sp.Integer(0), True))))
            value = value.arg
        products.append(_value_product(value, node.var, index)._replace(normalize=normalize))

    # The element passes: pass k holds the updates from node k-1's on, and node k's start value.
    bounds = [0] + [u for u, _ in nodes] + [len(rule.updates)]
    env: dict = {}
    passes, late = [], set()
    for k in range(len(nodes) + 1):
        updates = list(rule.updates[bounds[k]:bounds[k + 1]])
        if k > 0:  # the update holding node k-1 reads its value
            node = nodes[k - 1][1]
            lhs, rhs = updates[0]
            updates[0] = (lhs, rhs.xreplace({node: results[k - 1]}))
        # the values read back from arrays: the param and states, and earlier nodes' values
        env = {s: s for s in fixed} | {s: v for s, v in env.items() if v in results}
        for lhs, rhs in updates:
            stale = (rhs.free_symbols & late) - set(env)
            if stale:
                raise RuleError(f"update of {lhs}: {sorted(map(str, stale))} are computed before a preconditioned "
                                f"value; after it, read the param, grad, state and node values only")
        arrays = set(fixed) | set(results)
        temps = _straight_line(updates, env, arrays, f"_{_PREFIXES[k]}")
        for (lhs, rhs), (sym, _) in zip(updates, temps):
            late.add(lhs)
            if rhs in results:
                env[lhs] = rhs   # a node's value, readable in every later pass
        stores = [(s, env[s]) for s in (rule.param, *rule.state) if s in env and env[s] != s]
        if k < len(nodes):
            stores.append((works[k], nodes[k][1].start.xreplace(env)))
        hoist.arrays |= arrays
        exprs = [hoist(e) for _, e in temps] + [hoist(e) for _, e in stores]
        temps = [(s, e) for (s, _), e in zip(temps, exprs)]
        stores = [(t, e) for (t, _), e in zip(stores, exprs[len(temps):])]
        passes.append((temps, stores))

    # Which axes keep states: its array-free parts hoisted, the axis length and n_axes left in place.
    keep = Hoister({rows, n_axes}, found=hoist.found)(nodes[0][1].keep) if every_axis else sp.true
    merge = scalar(nodes[0][1].merge)

    # Canonical names s<k> for the per-step scalars, in the passes and the matrix operations alike.
    flat = [e for temps, stores in passes for e in [*(e for _, e in temps), *(e for _, e in stores)]]
    extra = [keep, merge] + [sp.sympify(d) for _, _, d in matrix_states]
    for k, ops in enumerate(ops_of):
        for op in ops:
            extra += [sp.sympify(c) for c in op.coefficients] + ([op.when] if op.when is not None else [])
        if k < len(nodes) and products[k].normalize is not None:
            extra += [sp.sympify(c) for c in products[k].normalize]
    scalars, scalar_exprs, renamed = _rename_scalars(hoist.found, flat + extra)
    keep, merge = renamed[len(flat)], renamed[len(flat) + 1]
    out = iter(renamed[:len(flat)] + renamed[len(flat) + 2:])
    passes = [([(s, next(out)) for s, _ in temps], [(t, next(out)) for t, _ in stores]) for temps, stores in passes]
    matrix_states = [(key, side, next(out)) for key, side, _ in matrix_states]
    stages = []
    for k, ops in enumerate(ops_of):
        new = []
        for op in ops:
            op = op._replace(coefficients=tuple(next(out) for _ in op.coefficients))
            new.append(op._replace(when=next(out)) if op.when is not None else op)
        product = products[k] if k < len(nodes) else None
        if product is not None and product.normalize is not None:
            product = product._replace(normalize=tuple(next(out) for _ in product.normalize))
        stages.append(Stage(tuple(new), product))

    s_temps, s_reduced = sp.cse(scalar_exprs, symbols=sp.numbered_symbols("_c"), order="canonical")
    reads_from = (rule.param, rule.grad, *rule.state, *results)
    element_passes = tuple(_element_pass(temps, stores, reads_from) for temps, stores in passes)
    elem_ops = sum(sp.count_ops(e) for p in element_passes for _, e in p.element_temps)
    return PreconditionedPlan(rule, tuple(rule.hyper), tuple(rule.state), tuple(scalars), tuple(s_temps),
                              tuple(s_reduced), element_passes, tuple(stages), tuple(matrix_states),
                              tuple(symmetric), int(elem_ops), every_axis, keep, merge)
