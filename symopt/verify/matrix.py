"""High-precision evaluation of matrix rules (an :class:`~symopt.rulebook.matrix.Iterate`).

The updates are evaluated for every element of one small tensor at 50 digits, as for
reductions (:mod:`.reductions`); an ``Iterate`` node is evaluated as written: its start
value per element, read as the ``rows × cols`` matrix (C order, the param's ``d0 × (d1⋯)``
view), then ``count`` applications of its body with mpmath matrices (sums, products,
transposes and powers evaluated directly, never through the planner's polynomial form or
its choice of the smaller Gram matrix).
"""

from __future__ import annotations

from .reductions import evaluate_elementwise


def _matrix_value(body, var, current, scalars):
    """``body`` (a SymPy matrix expression in ``var``) at ``var = current`` (an mpmath matrix)."""
    import mpmath
    import sympy as sp

    if body == var:
        return current
    if isinstance(body, sp.Transpose):
        return _matrix_value(body.arg, var, current, scalars).T
    if isinstance(body, sp.MatAdd):
        out = None
        for term in body.args:
            value = _matrix_value(term, var, current, scalars)
            out = value if out is None else out + value
        return out
    if isinstance(body, sp.MatMul):
        coeff, out = mpmath.mpf(1), None
        for factor in body.args:
            if isinstance(factor, sp.MatrixExpr):
                value = _matrix_value(factor, var, current, scalars)
                out = value if out is None else out * value
            else:
                coeff *= scalars(factor)
        return out * coeff
    if isinstance(body, sp.MatPow):
        base = _matrix_value(body.base, var, current, scalars)
        out = base
        for _ in range(int(body.exp) - 1):
            out = out * base
        return out
    raise TypeError(f"cannot evaluate {type(body).__name__} in an iteration body")


def exact_matrix_step(rule, values: list, shape: tuple) -> list:
    """Apply ``rule``'s updates to every element of a tensor of ``shape`` at 50 digits;
    ``values[i]`` maps the symbols to element i's mpmath values (C order).  Returns the envs."""
    import mpmath
    import sympy as sp

    from ..rulebook.matrix import Iterate, cols, rows

    nrows = shape[0]
    ncols = len(values) // nrows
    envs = [{**v, rows: mpmath.mpf(nrows), cols: mpmath.mpf(ncols)} for v in values]
    for lhs, rhs in rule.updates:
        repl = {}
        for k, it in enumerate(rhs.atoms(Iterate)):
            start = evaluate_elementwise(it.start, envs)
            x = mpmath.matrix(nrows, ncols)
            for i, v in enumerate(start):
                x[i // ncols, i % ncols] = v

            def scalars(expr, env=envs[0]):
                syms = sorted(expr.free_symbols, key=lambda s: s.name)
                return sp.lambdify(syms, expr, modules="mpmath", dummify=True)(*[env[s] for s in syms])

            for _ in range(int(scalars(it.count))):
                x = _matrix_value(it.body, it.var, x, scalars)
            sym = sp.Dummy(f"iterate{k}")
            for i, env in enumerate(envs):
                env[sym] = x[i // ncols, i % ncols]
            repl[it] = sym
        for env, value in zip(envs, evaluate_elementwise(rhs.xreplace(repl), envs)):
            env[lhs] = value
    return envs


def _mp_matrix_value(expr, mats: dict, scalars):
    """A :class:`~symopt.rulebook.preconditioned.Preconditioned` matrix expression at the mpmath
    matrices ``mats`` (symbol -> matrix): sums, products, transposes, ``InverseRoot`` by
    ``mpmath.eigsy`` (``V diag(λ^{-1/p}) Vᵀ``)."""
    import mpmath
    import sympy as sp

    from ..rulebook.preconditioned import InverseRoot

    if expr in mats:
        return mats[expr]
    if isinstance(expr, sp.Transpose):
        return _mp_matrix_value(expr.arg, mats, scalars).T
    if isinstance(expr, sp.MatAdd):
        parts = [_mp_matrix_value(a, mats, scalars) for a in expr.args]
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return out
    if isinstance(expr, sp.MatMul):
        coeff, out = mpmath.mpf(1), None
        for f in expr.args:
            if isinstance(f, sp.MatrixExpr):
                value = _mp_matrix_value(f, mats, scalars)
                out = value if out is None else out * value
            else:
                coeff *= scalars(f)
        return out * coeff
    if isinstance(expr, InverseRoot):
        e, q = mpmath.eigsy(_mp_matrix_value(expr.base, mats, scalars))
        p = scalars(expr.root)
        n = e.rows
        d = mpmath.matrix(n, n)
        for i in range(n):
            d[i, i] = e[i] ** (-1 / p)
        return q * d * q.T
    raise TypeError(f"cannot evaluate {type(expr).__name__} in a preconditioned rule")


def _mp_eigenbasis(op, mats: dict, scalars, first: bool):
    """``Eigenbasis(S, Q, v, first)`` at 50 digits: the eigenvectors of ``S`` by descending
    eigenvalue (``mpmath.eigsy``) where ``first``, else ``QR(S Q Π)`` (``mpmath.qr``) with ``Π``
    the columns by descending ``diag(Qᵀ S Q)``.  Returns the basis and ``Π`` (None when first)."""
    import mpmath

    s = _mp_matrix_value(op.base, mats, scalars)
    n = s.rows
    if first:
        e, q = mpmath.eigsy(s)
        order = sorted(range(n), key=lambda i: -e[i])
        return mpmath.matrix([[q[r, c] for c in order] for r in range(n)]), None
    old = mats[op.basis]
    p = s * old
    est = [mpmath.fsum(old[r, c] * p[r, c] for r in range(n)) for c in range(n)]
    order = sorted(range(n), key=lambda c: -est[c])
    q, _ = mpmath.qr(mpmath.matrix([[p[r, c] for c in order] for r in range(n)]))
    return q, order


def _unfold(tensor, axis: int):
    """The mode-``axis`` unfolding of an object array of mpf as an mpmath matrix (``d × rest``)."""
    import mpmath
    import numpy as np

    m = np.moveaxis(tensor, axis, 0).reshape(tensor.shape[axis], -1)
    return mpmath.matrix(m.tolist())


def _fold(matrix, dims: tuple, axis: int):
    """The inverse of :func:`_unfold`: the ``d × rest`` mpmath matrix back as an object array of shape ``dims``."""
    import numpy as np

    moved = (dims[axis], *dims[:axis], *dims[axis + 1:])
    flat = np.empty(matrix.rows * matrix.cols, dtype=object)
    flat[:] = [matrix[i, j] for i in range(matrix.rows) for j in range(matrix.cols)]
    return np.moveaxis(flat.reshape(moved), 0, axis)


def _exact_every_axis_step(rule, values: list, shape: tuple, mats: dict, nodes: list) -> tuple:
    """:func:`exact_preconditioned_step` of a rule of ``every_axis`` nodes: per kept axis k its own
    states (keys ``<key>_k``), the statistics of the unfolding ``G_(k)``, the value ``G ×₀ A₀ ⋯``."""
    import mpmath
    import numpy as np
    import sympy as sp

    from ..rulebook.matrix import rows
    from ..rulebook.preconditioned import Eigenbasis, Preconditioned, RMSNormalized, n_axes

    dims = tuple(int(d) for d in shape)
    envs = [{**v, n_axes: mpmath.mpf(len(dims))} for v in values]

    def scalars(expr, env=envs[0]):
        syms = sorted(expr.free_symbols, key=lambda s: s.name)
        return sp.lambdify(syms, expr, modules="mpmath", dummify=True)(*[env[s] for s in syms])

    def tensor(vals):
        arr = np.empty(len(vals), dtype=object)
        arr[:] = list(vals)
        return arr.reshape(dims)

    keep = nodes[0].keep
    axes = [k for k, d in enumerate(dims)
            if bool(scalars(sp.Piecewise((1, keep), (0, True)), {**envs[0], rows: mpmath.mpf(d)}))]
    current: dict = {}      # axis -> {state or var symbol: mpmath matrix}
    for k in axes:
        current[k] = {}
        for node in nodes:
            for st in node.states:
                current[k][st.sym] = (mpmath.eye(dims[k]) * scalars(st.init_diagonal()) if mats is None
                                      else mpmath.matrix(mats[f"{st.key}_{k}"].tolist()))
    out_mats: dict = {}

    def update(st, k, grad):
        if bool(scalars(sp.Piecewise((1, st.when), (0, True)))):
            if isinstance(st.update, Eigenbasis):
                first = bool(scalars(sp.Piecewise((1, st.update.first), (0, True))))
                current[k][st.sym], order = _mp_eigenbasis(st.update, current[k], scalars, first)
                if order is not None:   # the reordered elementwise state, along axis k
                    v = st.update.reorder
                    moved = np.take(tensor([env[v] for env in envs]), order, axis=k).reshape(-1)
                    for env, x in zip(envs, moved):
                        env[v] = x
            else:
                current[k][st.sym] = _mp_matrix_value(st.update, {**current[k], grad[0]: _unfold(grad[1], k)},
                                                      scalars)
        out_mats[f"{st.key}_{k}"] = current[k][st.sym]

    at_end = []
    for lhs, rhs in rule.updates:
        repl = {}
        for j, node in enumerate(rhs.atoms(Preconditioned)):
            g = tensor(evaluate_elementwise(node.start, envs))
            for st in node.states:
                if st.at_end:
                    at_end.append((st, (node.var, g)))
                else:
                    for k in axes:
                        update(st, k, (node.var, g))
            product = node.value.arg if isinstance(node.value, RMSNormalized) else node.value
            value = g
            for k in axes:      # the mode product of each kept axis in turn
                factor = _mp_matrix_value(product.args[0], current[k], scalars)
                value = _fold(factor * _unfold(value, k), dims, k)
            if product is not node.value and bool(scalars(sp.Piecewise((1, node.value.when), (0, True)))):
                flat = list(value.reshape(-1))
                d = mpmath.sqrt(mpmath.fsum(x * x for x in flat) / len(flat)) + scalars(node.value.eps)
                value = tensor([x / d for x in flat])
            sym = sp.Dummy(f"preconditioned{j}")
            for env, x in zip(envs, value.reshape(-1)):
                env[sym] = x
            repl[node] = sym
        for env, v in zip(envs, evaluate_elementwise(rhs.xreplace(repl), envs)):
            env[lhs] = v
    for st, grad in at_end:
        for k in axes:
            update(st, k, grad)
    return envs, out_mats


def exact_preconditioned_step(rule, values: list, shape: tuple, mats: dict) -> tuple:
    """Apply ``rule``'s updates (its :class:`~symopt.rulebook.preconditioned.Preconditioned` nodes)
    to a tensor of ``shape`` at 50 digits from the matrix states ``mats`` (key -> float array; None
    at the tensor's first step: their initial values), the states marked ``at_end`` after the last
    update.  Returns the envs and the new matrix states (key -> mpmath matrix)."""
    import mpmath
    import sympy as sp

    from ..rulebook.matrix import cols, rows
    from ..rulebook.preconditioned import Eigenbasis, Preconditioned

    nodes = [n for _, rhs in rule.updates for n in rhs.atoms(Preconditioned)]
    if nodes and nodes[0].every_axis:
        return _exact_every_axis_step(rule, values, shape, mats, nodes)

    nrows = shape[0]
    ncols = len(values) // nrows
    envs = [{**v, rows: mpmath.mpf(nrows), cols: mpmath.mpf(ncols)} for v in values]
    out_mats: dict = {}

    def scalars(expr, env=envs[0]):
        syms = sorted(expr.free_symbols, key=lambda s: s.name)
        return sp.lambdify(syms, expr, modules="mpmath", dummify=True)(*[env[s] for s in syms])

    def update(st, current):
        if bool(scalars(sp.Piecewise((1, st.when), (0, True)))):
            if isinstance(st.update, Eigenbasis):
                first = bool(scalars(sp.Piecewise((1, st.update.first), (0, True))))
                current[st.sym], order = _mp_eigenbasis(st.update, current, scalars, first)
                if order is not None:   # the reordered elementwise state, along the statistic's side
                    v = st.update.reorder
                    old = [env[v] for env in envs]
                    for i, env in enumerate(envs):
                        r, c = divmod(i, ncols)
                        env[v] = old[order[r] * ncols + c] if st.sym.shape[0] == rows else old[r * ncols + order[c]]
            else:
                current[st.sym] = _mp_matrix_value(st.update, current, scalars)
        out_mats[st.key] = current[st.sym]

    current: dict = {}
    for node in {n for _, rhs in rule.updates for n in rhs.atoms(Preconditioned)}:
        for st in node.states:
            n = nrows if st.sym.shape[0] == rows else ncols
            current[st.sym] = (mpmath.eye(n) * scalars(st.init_diagonal()) if mats is None
                               else mpmath.matrix(mats[st.key].tolist()))
    at_end = []
    for lhs, rhs in rule.updates:
        repl = {}
        for k, node in enumerate(rhs.atoms(Preconditioned)):
            start = evaluate_elementwise(node.start, envs)
            g = mpmath.matrix(nrows, ncols)
            for i, v in enumerate(start):
                g[i // ncols, i % ncols] = v
            current[node.var] = g
            for st in node.states:
                if st.at_end:
                    at_end.append(st)
                else:
                    update(st, current)
            value = _mp_matrix_value(node.value, current, scalars)
            sym = sp.Dummy(f"preconditioned{k}")
            for i, env in enumerate(envs):
                env[sym] = value[i // ncols, i % ncols]
            repl[node] = sym
        for env, v in zip(envs, evaluate_elementwise(rhs.xreplace(repl), envs)):
            env[lhs] = v
    for st in at_end:
        update(st, current)
    return envs, out_mats
