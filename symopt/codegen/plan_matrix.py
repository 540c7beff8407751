"""The plan of a matrix rule (one :class:`~symopt.rulebook.matrix.Iterate`): two element passes
around BLAS calls.

Everything is SymPy, as in :mod:`.plan`.  A matrix rule's step over one tensor is

1. *pass 0*, one loop over the elements: the updates before the iteration, in order, each an
   element temporary (the rule's order of evaluation is kept); the states they update are
   stored, the iteration's start value (without its array-free factors) is written to the
   workspace and the reductions of those factors (``‖U‖_F``) are accumulated in float64;
2. per-tensor scalars: the start value's factor ``σ`` (``1/max(‖U‖_F, ε)``) and the other
   scalars that read the reductions or the matrix shape (``rows``, ``cols``);
3. the iteration on the workspace, in BLAS: the body is an odd matrix polynomial
   ``q0 X + Σ_{k≥1} q_k (XXᵀ)^k X`` (:func:`odd_polynomial`), so each step is
   ``A = XXᵀ`` (``syrk``, on the smaller side), ``P = Σ q_k A^k + q0 I`` (Horner, ``gemm``) and
   ``X ← P X`` (``gemm``); ``σ`` is folded into the first step's ``alpha`` (σ² for ``A``);
4. *pass 1*, one loop: the update holding the iteration and those after it, reading the
   iteration's result as a per-element value.

Per-step scalars (hyperparameters and ``t``) are hoisted out of both passes, as in
:func:`~symopt.codegen.plan.make_plan`.
"""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

from ..rulebook.matrix import SHAPE_SYMBOLS, Iterate
from ..rulebook.metadata import RuleError
from ..rulebook.reduction import Reduction
from ..rulebook.rule import Rule
from .plan import Hoister, PlanSymbol, _rename_scalars

__all__ = ["MatrixPass", "MatrixIteration", "MatrixPlan", "make_matrix_plan", "odd_polynomial", "is_matrix_rule",
           "WORK", "RESULT"]

#: The workspace that pass 0 writes (the iteration's start, without its factor σ).
WORK = PlanSymbol("work", real=True)
#: The iteration's result, read by pass 1 (one element of the final matrix).
RESULT = PlanSymbol("result", real=True)


class MatrixPass(NamedTuple):
    element_temps: tuple    # ((sym, expr), ...) in order: the rule's updates and CSE temporaries
    stores: tuple           # ((target, expr), ...): param/state symbols, or WORK
    sums: tuple             # ((reduction sym, expr), ...): accumulated over the elements (float64)
    reads: tuple            # arrays read: param, grad, state, RESULT


class MatrixIteration(NamedTuple):
    count: sp.Basic         # per-step scalar (or number): how many steps
    coefficients: tuple     # q0, q1, ..., qd: per-step scalars or numbers
    scale: sp.Basic         # σ: per-tensor scalar, per-step scalar or number (start = σ · WORK)


class MatrixPlan(NamedTuple):
    rule: Rule
    hyper: tuple            # hyperparameter symbols, in the scalar function's argument order
    state: tuple            # state symbols, in argument order
    scalars: tuple          # per-step scalars s0..sk
    scalar_temps: tuple     # CSE temporaries of the scalar function
    scalar_exprs: tuple     # expressions of the per-step scalars
    reductions: tuple       # ((sym, op), ...) "sum" or "mean" over the tensor, accumulated in pass 0
    tensor_scalars: tuple   # ((sym, expr), ...) after pass 0: of s_k, reductions, rows, cols
    passes: tuple           # (pass 0, pass 1)
    iteration: MatrixIteration
    op_count: int


def is_matrix_rule(rule: Rule) -> bool:
    return any(rhs.has(Iterate) for _, rhs in rule.updates)


def _word(factor, var) -> list:
    """A matrix factor as a word over ``X`` and ``T`` (Xᵀ)."""
    if factor == var:
        return ["X"]
    if isinstance(factor, sp.Transpose) and factor.arg == var:
        return ["T"]
    if isinstance(factor, sp.MatMul):
        return [w for f in factor.args for w in _word(f, var)]
    if isinstance(factor, sp.MatPow) and factor.exp.is_Integer:
        return _word(factor.base, var) * int(factor.exp)
    raise RuleError(f"iteration body: cannot read {sp.sstr(factor)} as a product of {var.name} and its transpose")


def odd_polynomial(body, var) -> dict:
    """``{k: q_k}`` with ``body = Σ_k q_k (XXᵀ)^k X`` (an odd matrix polynomial), else RuleError."""
    expanded = sp.expand(body.doit())
    terms = expanded.args if isinstance(expanded, sp.MatAdd) else (expanded,)
    out: dict = {}
    for term in terms:
        coeff, word = sp.Integer(1), []
        for f in (term.args if isinstance(term, sp.MatMul) else (term,)):
            if isinstance(f, sp.MatrixExpr):
                word += _word(f, var)
            else:
                coeff *= f
        n = len(word)
        if n % 2 != 1 or any(w != ("X" if i % 2 == 0 else "T") for i, w in enumerate(word)):
            raise RuleError(f"iteration body term {sp.sstr(term)} is not of the form q (X Xᵀ)^k X "
                            f"(the body must be an odd matrix polynomial in {var.name})")
        out[n // 2] = out.get(n // 2, sp.Integer(0)) + coeff
    return out


def _split_passes(rule: Rule):
    """The updates before the one holding the Iterate, and that one with those after it."""
    for k, (_, rhs) in enumerate(rule.updates):
        if rhs.has(Iterate):
            return rule.updates[:k], rule.updates[k:], next(iter(rhs.atoms(Iterate)))
    raise RuleError(f"rule {rule.name!r} holds no Iterate")


def _straight_line(updates, env: dict, arrays: set, prefix: str):
    """Each update an element temporary (in order); ``env`` maps a rule symbol to its current value."""
    temps = []
    for lhs, rhs in updates:
        if rhs.has(Reduction) and not rhs.has(Iterate):
            raise RuleError(f"update of {lhs}: a matrix rule may use reductions only in the iteration's start value")
        sym = PlanSymbol(f"{prefix}{len(temps)}", real=True)
        temps.append((sym, rhs.xreplace(env)))
        env[lhs] = sym
        arrays.add(sym)
    return temps


def make_matrix_plan(rule: Rule) -> MatrixPlan:
    """Build the two passes and the iteration of ``rule`` (see the module docstring)."""
    before, after, it = _split_passes(rule)
    fixed = {rule.param, rule.grad, *rule.state}
    arrays = set(fixed)
    env: dict = {}
    temps0 = _straight_line(before, env, arrays, "_v")

    # The start value: array-free factors (σ, with the reductions) times the workspace value.
    start = it.start.xreplace(env)
    reductions, sums = [], []
    for red in sorted(start.atoms(Reduction), key=sp.default_sort_key):
        if red.scope != "tensor" or red.has(Iterate):
            raise RuleError(f"{sp.sstr(red)}: only TensorSum/TensorMean may appear in the iteration's start value")
        sym = PlanSymbol(f"r{len(reductions)}", real=True)
        reductions.append((sym, red.op))
        sums.append((sym, red.args[0]))
        start = start.xreplace({red: sym})
    scale, work = start.as_independent(*arrays, as_Add=False)
    if work.has(*(s for s, _ in reductions)):
        raise RuleError("a reduction in the iteration's start value must be a factor of it (U / ‖U‖)")

    hoist = Hoister(arrays | {WORK, RESULT}, {s for s, _ in reductions} | set(SHAPE_SYMBOLS))
    stores0 = [(s, env[s]) for s in (rule.param, *rule.state) if s in env]
    pass0 = [hoist(e) for _, e in temps0] + [hoist(work)] + [hoist(e) for _, e in sums]
    scale = scale if scale.is_Number else hoist.scalar(scale)

    # Pass 1: stored values are read back as the new values; earlier temporaries are not available.
    env1 = {s: s for s in env if s in fixed}
    stale = set(env) - set(env1)
    for lhs, rhs in after:
        late = rhs.xreplace({it: RESULT}).free_symbols & stale
        if late:
            raise RuleError(f"update of {lhs}: {sorted(map(str, late))} are computed before the matrix iteration; "
                            f"after it, read the param, grad and state only")
    rhs_iter = {it: RESULT}
    temps1 = _straight_line([(lhs, rhs.xreplace(rhs_iter)) for lhs, rhs in after], env1, arrays, "_w")
    hoist.arrays |= arrays
    pass1 = [hoist(e) for _, e in temps1]
    stores1 = [(s, env1[s]) for s in (rule.param, *rule.state) if s in env1 and env1[s] != s]

    poly = odd_polynomial(it.body, it.var)
    degree = max(poly)
    coefficients = [poly.get(k, sp.Integer(0)) for k in range(degree + 1)]
    coefficients = [q if q.is_Number else hoist.scalar(q) for q in coefficients]
    count = it.count if it.count.is_Number else hoist.scalar(it.count)

    # Per-tensor scalars (u<k>, their per-step parts hoisted) and the per-step scalars s<k>.
    t_items = sorted(hoist.tensor_found.items(), key=lambda kv: kv[1].name)
    n0, n1 = len(pass0), len(pass1)
    extra = [sp.sympify(x) for x in (scale, count, *coefficients)]
    scalars, scalar_exprs, renamed = _rename_scalars(hoist.found, pass0 + pass1 + [e for e, _ in t_items] + extra)
    pass0, pass1 = renamed[:n0], renamed[n0:n0 + n1]
    t_exprs = renamed[n0 + n1:n0 + n1 + len(t_items)]
    scale, count, *coefficients = renamed[n0 + n1 + len(t_items):]
    tensor_scalars = tuple((sym, e) for (_, sym), e in zip(t_items, t_exprs))

    s_temps, s_reduced = sp.cse(scalar_exprs, symbols=sp.numbered_symbols("_c"), order="canonical")
    nt0 = len(temps0)
    out0 = _pass([(sym, e) for (sym, _), e in zip(temps0, pass0[:nt0])], stores0 + [(WORK, None)],
                 pass0[nt0], list(zip([s for s, _ in reductions], pass0[nt0 + 1:])), rule)
    out1 = _pass([(sym, e) for (sym, _), e in zip(temps1, pass1)], stores1, None, [], rule)
    ops = sum(sp.count_ops(e) for p in (out0, out1) for _, e in p.element_temps)
    return MatrixPlan(rule, tuple(rule.hyper), tuple(rule.state), tuple(scalars), tuple(s_temps), tuple(s_reduced),
                      tuple(reductions), tensor_scalars, (out0, out1),
                      MatrixIteration(count, tuple(coefficients), scale), int(ops))


def _pass(temps, stores, work_expr, sums, rule) -> MatrixPass:
    """One element pass: the temporaries in order, then the stores (WORK's value given apart)."""
    defined = dict(temps)
    out_stores = []
    for target, value in stores:
        out_stores.append((target, work_expr if target is WORK else value))
    used = set()
    for e in [*defined.values(), *(v for _, v in out_stores), *(v for _, v in sums)]:
        used |= e.free_symbols
    reads = tuple(s for s in (rule.param, rule.grad, *rule.state, RESULT) if s in used)
    return MatrixPass(tuple(temps), tuple(out_stores), tuple(sums), reads)
