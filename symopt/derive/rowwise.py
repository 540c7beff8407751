"""Row-wise functions (softmax, softmax cross-entropy): derivation over indexed sums.

Derivation works on indexed sums, as SymPy writes them: ``Z = IndexedBase("z")``,
``Σ_j exp(z_j)`` is ``Sum(exp(Z[j]), (j, 0, K − 1))`` and ``sympy.diff(…, Z[k])``
produces Kronecker deltas that ``doit()`` turns into ``Piecewise`` terms valid
for ``0 ≤ k < K`` (:func:`in_range` keeps that branch).  :func:`softmax_form`
names ``exp(z_i)/Σ_j exp(z_j)`` as ``p_i``; :func:`stabilize` rewrites the sum
as ``e^m · S`` with ``m = max_j z_j`` and ``S = Σ_j exp(z_j − m)`` (log-sum-exp:
nothing overflows); :func:`sums_to_reductions` turns the remaining sums into
row reductions.  The plan stage (:func:`symopt.codegen.plan_gradients.plan_rowwise`)
orders each kernel's passes and hoists its row temporaries.
"""

from __future__ import annotations

import sympy as sp

__all__ = ["in_range", "softmax_form", "stabilize", "sums_to_reductions"]


def in_range(expr):
    """Replace each ``Piecewise((e, 0 ≤ k ≤ K−1), (0, True))`` from ``Sum.doit()`` by ``e``."""
    def pick(pw):
        e, cond = pw.args[0]
        if len(pw.args) == 2 and pw.args[1].cond == sp.true and cond != sp.true and pw.args[1].expr.doit() == 0:
            return e
        return pw
    return expr.replace(lambda e: isinstance(e, sp.Piecewise), pick)


def softmax_form(expr, Z, total, P, S):
    """Write ``exp(Z[i])`` as ``P[i] · S`` and ``total`` (= Σ_j exp(Z[j])) as ``S``, then simplify."""
    e = expr.xreplace({total: S})
    e = e.replace(lambda a: isinstance(a, sp.exp) and isinstance(a.args[0], sp.Indexed) and a.args[0].base == Z,
                  lambda a: P[a.args[0].indices[0]] * S)
    e = e.replace(lambda a: isinstance(a, sp.Sum), lambda a: sp.Sum(sp.simplify(a.function), *a.limits))
    return sp.factor_terms(sp.simplify(e))


def stabilize(expr, total, m, S):
    """Rewrite ``Σ_j exp(z_j)`` as ``e^m · S`` and simplify logs and powers (log-sum-exp form)."""
    e = expr.xreplace({total: sp.exp(m) * S})
    e = sp.expand_log(e, force=True)
    return sp.powsimp(e)


def sums_to_reductions(expr, index_map: dict, names):
    """Replace each ``Sum(f(i), (i, 0, K−1))`` by a new symbol; return ``(expr, [(sym, "sum", f_j)])``.

    ``index_map`` maps ``IndexedBase`` -> element symbol; ``names`` yields the new symbols.
    """
    reductions = []

    def lift(s):
        (i, _, _), = s.limits
        f = s.function.replace(lambda a: isinstance(a, sp.Indexed) and a.indices == (i,),
                               lambda a: index_map[a.base])
        sym = next(names)
        reductions.append((sym, "sum", f))
        return sym
    out = expr.replace(lambda a: isinstance(a, sp.Sum), lift)
    return out, reductions

