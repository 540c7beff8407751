"""High-precision evaluation of factored rules (:mod:`symopt.rulebook.factored`: ``RowMean``,
``ColMean``, row/column states), for :func:`symopt.verify.check.verify_factored_variant`.

The updates are evaluated for every element of one small tensor at 50 digits, as for
reductions (:mod:`.reductions`), straight from the rule: a param in the optimizer's ``matrix``
layout is a stack of matrices over its two matrix axes (the last two, or Optax's two largest in
a rule with ``min_dim_to_factor``: ``factored_axes``) and ``factored`` is true; a row state's value
at an element is that of its row, a column state's that of its column.  Each reduction node,
innermost first, is replaced per element by its exact value: ``RowMean`` the mean over the
element's row, ``ColMean`` over its column, ``TensorSum``/``TensorMean`` over the tensor
(``mpmath.fsum``).  Updates of states the param does not keep are skipped.
"""

from __future__ import annotations

import numpy as np

#: Shapes verified: a wide and a tall matrix, a stack of two, one whose two largest axes are not
#: its last two (Optax factors those), a vector and a scalar.
FACTORED_SHAPES = ((4, 6), (6, 4), (2, 3, 4), (5, 2, 6), (5,), ())


def element_groups(shape, layout: str | None = None, axes=None):
    """``(factored, rows, cols)`` of a param of ``shape`` in ``layout`` over the matrix ``axes``
    (the optimizer's ``factored_layouts`` and ``factored_axes``; None: factored when at least 2-D,
    over the last two axes, torch.optim.Adafactor's view): ``rows[e]``/``cols[e]`` the index of
    element ``e``'s row in a row state and of its column in a column state (flat, C order)."""
    from ..runtime.matrix import state_shape

    shape = tuple(shape)
    size = int(np.prod(shape, dtype=np.int64))
    if (layout or ("matrix" if len(shape) >= 2 else "vector")) != "matrix":
        return False, np.zeros(size, dtype=np.int64), np.arange(size)
    r, c = axes if axes is not None else (len(shape) - 2, len(shape) - 1)
    index = np.indices(shape).reshape(len(shape), -1)
    def flat(kind, zero):   # element e's index in a state of kind: its multi-index with axis ``zero`` 0
        at = tuple(np.zeros_like(x) if a == zero else x for a, x in enumerate(index))
        return np.ravel_multi_index(at, state_shape(kind, shape, "matrix", (r, c)))

    return True, flat("row", c), flat("col", r)


def state_index(kind: str, e: int, groups) -> int:
    """The index of element ``e``'s value in a state of ``kind`` (flat, C order; ``groups`` from
    :func:`element_groups`)."""
    _, rows, cols = groups
    return int(rows[e]) if kind == "row" else int(cols[e]) if kind == "col" else e


def exact_factored_step(rule, values: list, shape: tuple, eps: float, layout: str | None = None, axes=None) -> list:
    """Apply ``rule``'s updates to every element of a tensor of ``shape`` (in ``layout`` over
    ``axes``, see :func:`element_groups`) at 50 digits; ``values[i]`` maps the symbols to element i's mpmath values
    (C order; a row/col state's entry: its row's/column's value), ``eps`` is the dtype's machine
    epsilon.  Returns the envs."""
    import mpmath
    import sympy as sp

    from ..rulebook.factored import ColMean, RowMean, factored, machine_eps
    from ..rulebook.reduction import Reduction

    fact, rows, cols = element_groups(shape, layout, axes)
    kept = {s for s, spec in rule.state.items() if spec.shape in (("full", "row", "col") if fact else ("full", "vector"))}
    envs = [{**v, factored: fact, machine_eps: mpmath.mpf(eps)} for v in values]

    def evaluate(expr):
        syms = sorted(expr.free_symbols, key=lambda s: s.name)
        fn = sp.lambdify(syms, expr, modules="mpmath", dummify=True)
        return [fn(*[env.get(s, 0) for s in syms]) for env in envs]

    def group(node, e):
        if isinstance(node, RowMean):   # the mean over the element's row: one value per row
            return ("row", int(rows[e]))
        if isinstance(node, ColMean):
            return ("col", int(cols[e]))
        return 0

    for lhs, rhs in rule.updates:
        if lhs in rule.state and lhs not in kept:
            continue
        expr = rhs.xreplace({factored: sp.true if fact else sp.false})
        k = 0
        while expr.has(Reduction):
            repl = {}
            for node in [r for r in expr.atoms(Reduction) if not r.args[0].has(Reduction)]:
                arg = evaluate(node.args[0])
                sums: dict = {}
                for e, x in enumerate(arg):
                    sums.setdefault(group(node, e), []).append(x)
                totals = {key: mpmath.fsum(xs) / (len(xs) if node.op == "mean" else 1) for key, xs in sums.items()}
                sym = sp.Dummy(f"red{k}")
                k += 1
                for e, env in enumerate(envs):
                    env[sym] = totals[group(node, e)]
                repl[node] = sym
            expr = expr.xreplace(repl)
        for env, value in zip(envs, evaluate(expr)):
            env[lhs] = value
    return envs
