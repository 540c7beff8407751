"""The plan of a preconditioned matrix rule (one :class:`~symopt.rulebook.preconditioned.Preconditioned`):
two element passes around BLAS/LAPACK calls on per-tensor matrix states.

Everything is SymPy, as in :mod:`.plan_matrix`, whose element passes this plan shares.  A step
over one ``rows × cols`` tensor is

1. *pass 0*, one loop over the elements: the updates before the ``Preconditioned`` node (element
   temporaries, stores of the param and states) and its start value ``G`` into the workspace;
2. the matrix states in order, each when its condition holds (a per-step flag):

   * ``β S + α G Gᵀ`` / ``β S + α Gᵀ G``: ``?syrk`` into ``S`` (upper triangle, then mirrored);
   * ``InverseRoot(S', p)``: ``?syevd`` of ``S'`` (``V Λ Vᵀ``), ``W = V Λ^{-1/(2p)}``, ``S = W Wᵀ``
     by ``?syrk``;

3. the value ``A G B`` (``A``, ``B`` states; either may be absent) by ``?gemm`` into the result
   buffer; with ``Gᵀ`` the C-order workspace read as a column-major ``cols × rows`` matrix, the
   symmetric states give ``(A G B)ᵀ = B Gᵀ A`` without copies;
4. *pass 1*, one loop: the update holding the node and those after it.

Per-step scalars (hyperparameters, ``t``, the conditions, the β/α/p coefficients and the
states' initial diagonals) are hoisted out as in :func:`~symopt.codegen.plan.make_plan`.
"""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

from ..rulebook.matrix import rows
from ..rulebook.metadata import RuleError
from ..rulebook.preconditioned import InverseRoot, Preconditioned
from ..rulebook.rule import Rule
from .plan import Hoister, _rename_scalars
from .plan_matrix import RESULT, WORK, _pass, _straight_line

__all__ = ["MatrixOp", "PreconditionedPlan", "is_preconditioned_rule", "make_preconditioned_plan"]


class MatrixOp(NamedTuple):
    kind: str               # "gram" (S ← β S + α G Gᵀ or α Gᵀ G) or "inverse_root" (S ← source^{-1/p})
    target: int             # the state written
    source: int             # inverse_root: the state rooted; gram: the target itself
    side: str               # "rows" (rows × rows: G Gᵀ) or "cols" (cols × cols: Gᵀ G)
    coefficients: tuple     # gram: (α, β); inverse_root: (p,) -- per-step scalars or numbers
    when: sp.Basic | None   # per-step flag (1.0 when the update runs), None when always


class PreconditionedPlan(NamedTuple):
    rule: Rule
    hyper: tuple            # hyperparameter symbols, in the scalar function's argument order
    state: tuple            # elementwise state symbols, in argument order
    scalars: tuple          # per-step scalars s0..sk
    scalar_temps: tuple     # CSE temporaries of the scalar function
    scalar_exprs: tuple     # expressions of the per-step scalars
    passes: tuple           # (pass 0, pass 1): plan_matrix.MatrixPass
    matrix_states: tuple    # ((key, side, initial diagonal: scalar or number), ...)
    ops: tuple              # MatrixOp, in order
    left: int | None        # the value A G B: the index of A (None: absent)
    right: int | None       # ... of B
    op_count: int


def is_preconditioned_rule(rule: Rule) -> bool:
    return any(rhs.has(Preconditioned) for _, rhs in rule.updates)


def _split(rule: Rule):
    for k, (_, rhs) in enumerate(rule.updates):
        nodes = rhs.atoms(Preconditioned)
        if nodes:
            if len(nodes) > 1 or any(r.has(Preconditioned) for _, r in rule.updates[k + 1:]):
                raise RuleError(f"rule {rule.name!r}: one Preconditioned node per rule")
            return rule.updates[:k], rule.updates[k:], next(iter(nodes))
    raise RuleError(f"rule {rule.name!r} holds no Preconditioned node")


def _gram_op(k, st, var, scalar) -> MatrixOp:
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
    return MatrixOp("gram", k, k, side, (scalar(alpha), scalar(beta)), None)


def _value_factors(value, var, index) -> tuple:
    """``(A, B)`` state indices of ``value = A G B`` (None where absent)."""
    factors = list(value.args) if isinstance(value, sp.MatMul) else [value]
    if any(not isinstance(f, sp.MatrixExpr) for f in factors) or factors.count(var) != 1:
        raise RuleError(f"Preconditioned value {sp.sstr(value)}: must be a product A {var.name} B of matrix states "
                        f"around {var.name} (no scalar factors: scale the update outside)")
    pos = factors.index(var)
    left, right = factors[:pos], factors[pos + 1:]
    if len(left) > 1 or len(right) > 1 or any(f not in index for f in left + right):
        raise RuleError(f"Preconditioned value {sp.sstr(value)}: at most one matrix state on each side of "
                        f"{var.name}")
    return (index[left[0]] if left else None), (index[right[0]] if right else None)


def make_preconditioned_plan(rule: Rule) -> PreconditionedPlan:
    """Build the two passes, the matrix operations and the value of ``rule`` (module docstring)."""
    before, after, node = _split(rule)
    fixed = {rule.param, rule.grad, *rule.state}
    arrays = set(fixed)
    env: dict = {}
    temps0 = _straight_line(before, env, arrays, "_v")
    start = node.start.xreplace(env)
    hoist = Hoister(arrays | {WORK, RESULT})
    stores0 = [(s, env[s]) for s in (rule.param, *rule.state) if s in env]
    pass0 = [hoist(e) for _, e in temps0] + [hoist(start)]

    def scalar(e):
        e = sp.sympify(e)
        return e if e.is_Number else hoist.scalar(e)

    index = {st.sym: k for k, st in enumerate(node.states)}
    ops, states = [], []
    for k, st in enumerate(node.states):
        side = "rows" if st.sym.shape[0] == rows else "cols"
        states.append((st.key, side, scalar(st.init_diagonal())))
        if isinstance(st.update, InverseRoot):
            source = st.update.base
            if source not in index or source.shape != st.sym.shape:
                raise RuleError(f"matrix state {st.sym.name}: InverseRoot of {source.name}, which is not a matrix "
                                f"state of the same shape")
            op = MatrixOp("inverse_root", k, index[source], side, (scalar(st.update.root),), None)
        else:
            op = _gram_op(k, st, node.var, scalar)
        when = None if st.when == sp.true else scalar(sp.Piecewise((sp.Integer(1), st.when), (sp.Integer(0), True)))
        ops.append(op._replace(when=when))
    left, right = _value_factors(node.value, node.var, index)

    # Pass 1: stored values are read back as the new values; earlier temporaries are not available.
    env1 = {s: s for s in env if s in fixed}
    stale = set(env) - set(env1)
    for lhs, rhs in after:
        late = rhs.xreplace({node: RESULT}).free_symbols & stale
        if late:
            raise RuleError(f"update of {lhs}: {sorted(map(str, late))} are computed before the preconditioner; "
                            f"after it, read the param, grad and state only")
    temps1 = _straight_line([(lhs, rhs.xreplace({node: RESULT})) for lhs, rhs in after], env1, arrays, "_w")
    hoist.arrays |= arrays
    pass1 = [hoist(e) for _, e in temps1]
    stores1 = [(s, env1[s]) for s in (rule.param, *rule.state) if s in env1 and env1[s] != s]

    # Canonical names s<k> for the per-step scalars, in the passes and the matrix operations alike.
    n0, n1 = len(pass0), len(pass1)
    extra = [sp.sympify(x) for x in [d for _, _, d in states]
             + [c for op in ops for c in op.coefficients] + [op.when for op in ops if op.when is not None]]
    scalars, scalar_exprs, renamed = _rename_scalars(hoist.found, pass0 + pass1 + extra)
    pass0, pass1, extra = renamed[:n0], renamed[n0:n0 + n1], list(renamed[n0 + n1:])
    states = [(key, side, extra.pop(0)) for key, side, _ in states]
    ops = [op._replace(coefficients=tuple(extra.pop(0) for _ in op.coefficients)) for op in ops]
    ops = [op._replace(when=extra.pop(0)) if op.when is not None else op for op in ops]

    s_temps, s_reduced = sp.cse(scalar_exprs, symbols=sp.numbered_symbols("_c"), order="canonical")
    nt0 = len(temps0)
    out0 = _pass([(sym, e) for (sym, _), e in zip(temps0, pass0[:nt0])], stores0 + [(WORK, None)],
                 pass0[nt0], [], rule)
    out1 = _pass([(sym, e) for (sym, _), e in zip(temps1, pass1)], stores1, None, [], rule)
    elem_ops = sum(sp.count_ops(e) for p in (out0, out1) for _, e in p.element_temps)
    return PreconditionedPlan(rule, tuple(rule.hyper), tuple(rule.state), tuple(scalars), tuple(s_temps),
                              tuple(s_reduced), (out0, out1), tuple(states), tuple(ops), left, right, int(elem_ops))

