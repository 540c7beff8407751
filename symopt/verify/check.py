"""Verification: generated kernels against a high-precision evaluation of the Rule itself.

For each rule variant and dtype, ``verify_variant``:

1. builds an optimizer on random params and runs a few warm-up steps with the
   kernel, so the state is a valid state of the rule (e.g. second moments ≥ 0);
2. copies params, grads and state exactly (every float32/float64 value is exactly
   representable in mpmath) and evaluates the rule's SymPy updates, in order, with
   mpmath at 50 significant digits;
3. runs one kernel step and compares every output (param and each state) with the
   mpmath value: ``err = |kernel − exact| / max(|exact|, |old value|, tiny)``.

Inputs span magnitude bands (tiny, unit, huge — chosen inside each dtype's range
so that squares stay normal numbers).  The default tolerances are 2e-5 for
float32 and 1e-12 for float64: per-step scalars are float64 cast to the kernel
dtype, so a float32 step carries a few float32 roundings of every factor.

Matrix rules (an ``Iterate``: every output element depends on every input element) run
on small matrices of each shape in :data:`MATRIX_SHAPES` (:func:`verify_matrix_variant`,
exact values from :mod:`.matrix`), with the error relative to the largest exact value of
each output (max-norm): a matrix iteration's rounding is shared among the elements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TOLERANCE = {"float32": 2e-5, "float64": 1e-12}
#: Matrix rules: wide, tall and a 3-D param (read as 2 × 6), with the tolerances above
#: (max-norm; muon measured 8e-8 in float32 and 1.2e-16 in float64).
MATRIX_SHAPES = ((4, 6), (6, 4), (2, 3, 2))
#: The shapes of the rules that rotate into eigenbases (SOAP): square (see verify_preconditioned_variant).
SQUARE_SHAPES = ((4, 4), (5, 5))
#: More shapes of the rules that precondition every axis (Shampoo, SOAP): full-rank statistics.
EVERY_AXIS_SHAPES = ((3,), (2, 2, 2))
BANDS = {"float32": (1e-12, 1.0, 1e12), "float64": (1e-60, 1.0, 1e60)}
_DPS = 50


@dataclass
class Result:
    rule: str
    variant: str
    dtype: str
    max_error: float
    tolerance: float
    worst: str
    samples: int

    @property
    def ok(self) -> bool:
        return self.max_error <= self.tolerance


def mp_functions(rule):
    """Each update of ``rule`` as an mpmath function of every symbol it may read."""
    import sympy as sp

    from ..rulebook.metadata import t as t_sym

    symbols = [rule.param, rule.grad, *rule.state, *rule.hyper, t_sym, *rule.temporaries]
    fns = []
    for lhs, rhs in rule.updates:
        # lambdify prints SymPy's own expression tree (dummified names: no user text is executed).
        fns.append((lhs, sp.lambdify(symbols, rhs, modules="mpmath", dummify=True)))
    return symbols, fns


def exact_step(rule, symbols, fns, values: dict):
    """Apply the updates in order at high precision; returns the new values by symbol."""
    env = dict(values)
    for lhs, fn in fns:
        env[lhs] = fn(*[env.get(s, 0) for s in symbols])
    return env


def hyper_values(family, rule, group: dict) -> dict:
    """``{symbol: mpf or 0/1}`` of ``rule``'s hyperparameters in a param group the runtime has
    validated (values by keyword, a tuple entry by index; a choice by its position)."""
    out = {}
    for sym in rule.hyper:
        h = family.hyper[sym]
        key = h.key or sym.name
        v = group[key] if h.index is None else group[key][h.index]
        out[sym] = _hyper_value(h, v)
    return out


def verify_variant(family, rule, dtype: str, *, samples: int = 200, steps: int = 3, seed: int = 0,
                   hyper: dict | None = None) -> Result:
    """Compare the generated kernel of ``rule`` (a variant of ``family``) with mpmath."""
    import mpmath

    from ..rulebook.reduction import has_reductions
    from .reductions import exact_tensor_step
    from ..rulebook.metadata import t as t_sym
    from ..runtime.optimizer import Optimizer

    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    n = samples * len(BANDS[dtype])
    scale = np.repeat(np.array(BANDS[dtype]), samples)
    params = (rng.standard_normal(n) * scale).astype(dt)
    kwargs = {**_options_for(family, rule), **(hyper or {})}
    opt = Optimizer(_name_or_family(family), [params], **kwargs)
    if opt.variant != rule.name:
        raise RuntimeError(f"could not select variant {rule.name!r} of {family.name!r}")
    hyper_by_sym = hyper_values(family, rule, opt.param_groups[0])

    warm = int(rng.integers(0, 4))
    for _ in range(warm):
        opt.step([(rng.standard_normal(n) * scale).astype(dt)])
    worst, worst_where = 0.0, ""
    mpmath.mp.dps = _DPS
    symbols, fns = mp_functions(rule)
    keys = opt.state_keys
    state_syms = {rule.state_key(s): s for s in rule.state}
    for k in range(steps):
        grad = (rng.standard_normal(n) * scale).astype(dt)
        old_p = params.copy()
        old_state = {key: opt.state[0][key].reshape(-1).copy() for key in keys}
        t_val = int(opt.step_counts[0]) + 1
        opt.step([grad])
        all_vals = []
        for i in range(n):
            vals = {rule.param: mpmath.mpf(float(old_p[i])), rule.grad: mpmath.mpf(float(grad[i])), t_sym: t_val,
                    **hyper_by_sym}
            for key in keys:
                vals[state_syms[key]] = mpmath.mpf(float(old_state[key][i]))
            all_vals.append(vals)
        # Sums over the tensor need every element at once (verify/reductions.py).
        envs = exact_tensor_step(rule, all_vals) if has_reductions(rule) else None
        for i in range(n):
            env = envs[i] if envs is not None else exact_step(rule, symbols, fns, all_vals[i])
            outs = [("param", rule.param, float(params[i]), float(old_p[i]))]
            outs += [(key, state_syms[key], float(opt.state[0][key].reshape(-1)[i]), float(old_state[key][i]))
                     for key in keys]
            for label, sym, got, old in outs:
                exact = env[sym]
                if not mpmath.isfinite(exact):
                    continue
                ex = float(exact)
                if not math.isfinite(ex):
                    continue
                tiny = np.finfo(dt).tiny
                denom = max(abs(ex), abs(old), tiny)
                err = float(abs(mpmath.mpf(got) - exact)) / denom if math.isfinite(got) else math.inf
                if err > worst:
                    worst = err
                    worst_where = f"step {k + 1}, {label}[{i}] (|x|~{scale[i]:.0e}): got {got!r}, exact {ex!r}"
    return Result(family.name, rule.name, dtype, worst, TOLERANCE[dtype], worst_where, n * steps)


def _element_values(rule, old_p, grad, t_val, hyper_by_sym: dict, old_state: dict, index=None) -> list:
    """Per element ``e``, the exact inputs of one step: param, grad, ``t``, hyperparameters and each
    state symbol's old value (``old_state``: symbol -> flat array, read at ``index(sym, e)``, default ``e``)."""
    import mpmath

    from ..rulebook.metadata import t as t_sym

    values = []
    for e, ge in enumerate(grad.reshape(-1)):
        vals = {rule.param: mpmath.mpf(float(old_p[e])), rule.grad: mpmath.mpf(float(ge)), t_sym: t_val,
                **hyper_by_sym}
        vals.update({sym: mpmath.mpf(float(arr[e if index is None else index(sym, e)]))
                     for sym, arr in old_state.items()})
        values.append(vals)
    return values


def _worst_of(outs, dt, where: str, worst: float, worst_where: str):
    """The largest error max|got − exact| / max|exact| over ``outs`` ((label, exact values, got)), or the
    incoming one if larger; a non-finite value counts as an infinite error."""
    import mpmath

    for label, exact, got in outs:
        scale = max(float(abs(e)) for e in exact) or float(np.finfo(dt).tiny)
        for i, e in enumerate(exact):
            value = float(got[i])
            err = float(abs(mpmath.mpf(value) - e)) / scale if math.isfinite(value) else math.inf
            if err > worst:
                worst, worst_where = err, f"{where}, {label}[{i}]: got {value!r}, exact {float(e)!r}"
    return worst, worst_where


def verify_matrix_variant(family, rule, dtype: str, *, steps: int = 3, seed: int = 0,
                          hyper: dict | None = None) -> Result:
    """Compare the generated step of matrix rule ``rule`` with mpmath on :data:`MATRIX_SHAPES`."""
    import mpmath

    from ..runtime.optimizer import Optimizer
    from .matrix import exact_matrix_step

    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    kwargs = {**_options_for(family, rule), **(hyper or {})}
    worst, worst_where, count = 0.0, "", 0
    mpmath.mp.dps = _DPS
    state_syms = {rule.state_key(s): s for s in rule.state}
    for shape in MATRIX_SHAPES:
        params = rng.standard_normal(shape).astype(dt)
        opt = Optimizer(_name_or_family(family), [params], **kwargs)
        if opt.variant != rule.name:
            raise RuntimeError(f"could not select variant {rule.name!r} of {family.name!r}")
        hyper_by_sym = hyper_values(family, rule, opt.param_groups[0])
        for _ in range(int(rng.integers(0, 3))):
            opt.step([rng.standard_normal(shape).astype(dt)])
        keys = opt.state_keys
        for k in range(steps):
            grad = rng.standard_normal(shape).astype(dt)
            old_p = params.reshape(-1).copy()
            old_state = {key: opt.state[0][key].reshape(-1).copy() for key in keys}
            t_val = int(opt.step_counts[0]) + 1
            opt.step([grad])
            values = _element_values(rule, old_p, grad, t_val, hyper_by_sym, {state_syms[key]: old_state[key]
                                                                                for key in keys})
            envs = exact_matrix_step(rule, values, shape)
            outs = [("param", rule.param, params.reshape(-1))]
            outs += [(key, state_syms[key], opt.state[0][key].reshape(-1)) for key in keys]
            worst, worst_where = _worst_of([(label, [env[sym] for env in envs], got) for label, sym, got in outs],
                                           dt, f"shape {shape}, step {k + 1}", worst, worst_where)
            count += len(values)
    return Result(family.name, rule.name, dtype, worst, TOLERANCE[dtype], worst_where, count)


def _hyper_value(h, v):
    """A validated keyword value as the rule's symbol takes it (bools 1/0, a choice's position)."""
    import mpmath

    if h.kind == "choice":
        return h.position(v)
    if h.kind == "optional" and v is None:
        from ..rulebook.metadata import NONE_VALUE

        return mpmath.mpf(NONE_VALUE)  # the rule's value of None
    return (1 if v else 0) if isinstance(v, (bool, np.bool_)) else mpmath.mpf(float(v))


#: Tolerances of the preconditioned rules (relative to the largest exact value): the inverse roots
#: of the statistics amplify rounding by their condition number (ε = 1e-6 against ‖L‖ ≈ 10 on the
#: small shapes gives 1e-11 in float64).  In float32 an eigenvalue ε = 1e-6 lies below the
#: eigensolver's resolution u‖L‖ ≈ 1e-6, so float32 is verified with initial diagonals of at
#: least :data:`FLOAT32_MIN_DIAGONAL` (condition numbers ≤ 1e3).
PRECONDITIONED_TOLERANCE = {"float32": 1e-4, "float64": 1e-9}
FLOAT32_MIN_DIAGONAL = 1e-2


def verify_preconditioned_variant(family, rule, dtype: str, *, steps: int = 3, seed: int = 0,
                                  hyper: dict | None = None) -> Result:
    """Compare the generated step of a preconditioned rule (:mod:`~symopt.rulebook.preconditioned`)
    with mpmath on the 2-D :data:`MATRIX_SHAPES`: param, elementwise and matrix states, each step
    from the generated code's own previous state."""
    import mpmath

    from ..rulebook.preconditioned import Eigenbasis, matrix_states_of, preconditioners_in
    from ..runtime.optimizer import Optimizer
    from .matrix import exact_preconditioned_step

    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    kwargs = {**_options_for(family, rule), **(hyper or {})}
    worst, worst_where, count = 0.0, "", 0
    mpmath.mp.dps = _DPS
    state_syms = {rule.state_key(s): s for s in rule.state}
    nodes = [n for _, rhs in rule.updates for n in preconditioners_in(rhs)]
    states = matrix_states_of(nodes)
    every_axis = bool(nodes) and nodes[0].every_axis
    # eigenvectors are compared up to their signs; a statistic with an axis longer than the others'
    # product is rank-deficient at first and the eigenvectors of its null space are arbitrary, so
    # eigenbases run on square matrices (and, reading every axis, a cube and a vector)
    eig_keys = {st.key for st in states if isinstance(st.update, Eigenbasis)}
    raised = dict(kwargs)
    for st in states:
        d = st.init_diagonal()
        if d in rule.hyper and rule.hyper[d].index is None:
            key = rule.hyper_key(d)
            raised[key] = max(float(kwargs.get(key, rule.hyper[d].default)), FLOAT32_MIN_DIAGONAL)
    shapes = (SQUARE_SHAPES if eig_keys else MATRIX_SHAPES) + (EVERY_AXIS_SHAPES if every_axis else ())
    for shape in shapes:
        if len(shape) != 2 and not every_axis:
            continue
        params = rng.standard_normal(shape).astype(dt)
        # a vector's statistic is ε I plus rank t < d in its first steps: its root −1/2 reads the
        # eigenvalues ε, rounded by u‖L‖ (relative 1e-9 at ε = 1e-6): vectors, as float32, run
        # with initial diagonals of at least FLOAT32_MIN_DIAGONAL
        opt = Optimizer(_name_or_family(family), [params], **(raised if dt == np.float32 or len(shape) == 1
                                                                else kwargs))
        mat_keys = opt.matrix_state_keys(0)
        bases = {key for key in mat_keys if key in eig_keys or key.rpartition("_")[0] in eig_keys}
        hyper_by_sym = hyper_values(family, rule, opt.param_groups[0])
        for _ in range(int(rng.integers(0, 3))):
            opt.step([rng.standard_normal(shape).astype(dt)])
        keys = opt.state_keys
        for k in range(steps):
            grad = rng.standard_normal(shape).astype(dt)
            old_p = params.reshape(-1).copy()
            old_state = {key: opt.state[0][key].reshape(-1).copy() for key in keys}
            t_val = int(opt.step_counts[0]) + 1
            old_mats = None if t_val == 1 else {key: opt.state[0][key].copy() for key in mat_keys}
            opt.step([grad])
            values = _element_values(rule, old_p, grad, t_val, hyper_by_sym, {state_syms[key]: old_state[key]
                                                                                for key in keys})
            envs, mats = exact_preconditioned_step(rule, values, shape, old_mats)
            outs = [("param", [env[rule.param] for env in envs], params.reshape(-1))]
            outs += [(key, [env[state_syms[key]] for env in envs], opt.state[0][key].reshape(-1)) for key in keys]
            for key in mat_keys:
                got = opt.state[0][key]
                exact = mats[key]
                if key in bases:    # each exact eigenvector with the sign of the computed one
                    n = exact.rows
                    signs = [1 if sum(float(exact[r, c]) * float(got[r, c]) for r in range(n)) >= 0 else -1
                             for c in range(n)]
                    exact = mpmath.matrix([[exact[r, c] * signs[c] for c in range(n)] for r in range(n)])
                outs.append((key, list(exact), got.reshape(-1)))
            worst, worst_where = _worst_of(outs, dt, f"shape {shape}, step {k + 1}", worst, worst_where)
            count += len(values)
    return Result(family.name, rule.name, dtype, worst, PRECONDITIONED_TOLERANCE[dtype], worst_where, count)


def _is_preconditioned_rule(rule) -> bool:
    from ..rulebook.preconditioned import Preconditioned

    return any(rhs.has(Preconditioned) for _, rhs in rule.updates)


def _is_matrix_rule(rule) -> bool:
    from ..rulebook.matrix import Iterate

    return any(rhs.has(Iterate) for _, rhs in rule.updates)


def _is_factored_rule(rule) -> bool:
    from ..rulebook.factored import is_factored_rule

    return is_factored_rule(rule)


def verify_factored_variant(family, rule, dtype: str, *, steps: int = 3, seed: int = 0, hyper: dict | None = None):
    """Compare the generated step of factored rule ``rule`` with mpmath on :data:`FACTORED_SHAPES`
    (errors relative to the largest exact value of each output, as for matrix rules)."""
    import mpmath

    from ..runtime.optimizer import Optimizer
    from .factored import FACTORED_SHAPES, element_groups, exact_factored_step, state_index

    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    kwargs = {**_options_for(family, rule), **(hyper or {})}
    worst, worst_where, count = 0.0, "", 0
    mpmath.mp.dps = _DPS
    state_syms = {rule.state_key(s): s for s in rule.state}
    kinds = {rule.state_key(s): spec.shape for s, spec in rule.state.items()}
    for shape in FACTORED_SHAPES:
        params = np.asarray(rng.standard_normal(shape)).astype(dt)
        opt = Optimizer(_name_or_family(family), [params], **kwargs)
        layout, axes = opt.factored_layouts[0], opt.factored_axes[0]
        groups = element_groups(shape, layout, axes)
        hyper_by_sym = hyper_values(family, rule, opt.param_groups[0])
        for _ in range(int(rng.integers(1, 3))):
            opt.step([np.asarray(rng.standard_normal(shape)).astype(dt)])
        keys = [key for key in opt.state[0] if key != "step"]
        for k in range(steps):
            grad = np.asarray(rng.standard_normal(shape)).astype(dt)
            old_p = params.reshape(-1).copy()
            old_state = {key: opt.state[0][key].reshape(-1).copy() for key in keys}
            t_val = int(opt.step_counts[0]) + 1
            opt.step([grad])
            values = _element_values(rule, old_p, grad, t_val, hyper_by_sym,
                                     {state_syms[key]: old_state[key] for key in keys},
                                     lambda sym, e: state_index(rule.state[sym].shape, e, groups))
            envs = exact_factored_step(rule, values, shape, float(np.finfo(dt).eps), layout, axes)
            outs = [("param", rule.param, params.reshape(-1), list(range(len(envs))))]
            for key in keys:
                got = opt.state[0][key].reshape(-1)
                first = {}
                for e in range(len(envs)):
                    first.setdefault(state_index(kinds[key], e, groups), e)
                outs.append((key, state_syms[key], got, [first[i] for i in range(got.size)]))
            for label, sym, got, where in outs:
                exact = [envs[e][sym] for e in where]
                scale = max([float(abs(x)) for x in exact] + [0.0]) or float(np.finfo(dt).tiny)
                for i, x in enumerate(exact):
                    err = float(abs(mpmath.mpf(float(got[i])) - x)) / scale
                    if not math.isfinite(float(got[i])):
                        err = math.inf
                    if err > worst:
                        worst = err
                        worst_where = (f"shape {shape}, step {k + 1}, {label}[{i}]: got {float(got[i])!r}, "
                                       f"exact {float(x)!r}")
            count += len(values)
    return Result(family.name, rule.name, dtype, worst, TOLERANCE[dtype], worst_where, count)


def _name_or_family(family):
    from ..runtime.kernels import builtin_names

    return family.name if family.name in builtin_names() else family


def _options_for(family, rule) -> dict:
    """Keyword arguments that select ``rule`` among the family's variants."""
    import itertools

    # Candidate values for the variant conditions: defaults, then flipped bools, then nonzero/zero floats.
    cond_syms = set()
    for when, _ in family.variants:
        cond_syms |= when.free_symbols
    choices = []
    for s in sorted(cond_syms, key=lambda x: x.name):
        h = family.hyper[s]
        if h.kind == "bool":
            choices.append([(s, h.default), (s, not h.default)])
        else:
            alt = 0.9 if h.default == 0 else 0.0
            choices.append([(s, h.default), (s, alt)])
    for combo in itertools.product(*choices) if choices else [()]:
        values = family.defaults_by_symbol()
        values.update(dict(combo))
        if family.select(values) is rule:
            kwargs: dict = {}
            tuples: dict = {}
            for s, v in dict(combo).items():
                h = family.hyper[s]
                v = h.user_default if v == h.default else v     # an optional's default: None, as a user writes it
                key = h.key or s.name
                if h.index is None:
                    kwargs[key] = v
                else:
                    tuples.setdefault(key, {})[h.index] = v
            for key, d in tuples.items():
                base = list(family.rule_for().defaults().get(key) or ())
                for i, v in d.items():
                    base[i] = v
                kwargs[key] = tuple(base)
            return kwargs
    raise RuntimeError(f"{family.name}: no option combination selects variant {rule.name!r}")


def verify(names=None, *, samples: int = 200, steps: int = 3, seed: int = 0, dtypes=("float32", "float64")):
    """Verify every variant of the named built-in rules (default: all) or of the given
    :class:`symopt.Rule`/``Family`` objects; returns Results."""
    from ..rulebook.catalog import builtin_families
    from ..rulebook.rule import Family, Rule

    fams = builtin_families()
    names = list(fams) if not names else list(names)
    results = []
    for name in names:
        if isinstance(name, Rule):
            fam = Family.of(name)
        elif isinstance(name, Family):
            fam = name
        elif name in fams:
            fam = fams[name]
        else:
            raise ValueError(f"unknown rule {name!r}")
        for _, rule in fam.variants:
            for dtype in dtypes:
                if _is_factored_rule(rule):
                    results.append(verify_factored_variant(fam, rule, dtype, steps=steps, seed=seed))
                elif _is_preconditioned_rule(rule):
                    results.append(verify_preconditioned_variant(fam, rule, dtype, steps=steps, seed=seed))
                elif _is_matrix_rule(rule):
                    results.append(verify_matrix_variant(fam, rule, dtype, steps=steps, seed=seed))
                else:
                    results.append(verify_variant(fam, rule, dtype, samples=samples, steps=steps, seed=seed))
    return results


def format_table(results) -> str:
    lines = [f"{'rule':<22} {'variant':<28} {'dtype':<8} {'max rel err':>12} {'tolerance':>10}  result",
             "-" * 92]
    for r in results:
        lines.append(f"{r.rule:<22} {r.variant:<28} {r.dtype:<8} {r.max_error:>12.3e} {r.tolerance:>10.0e}  "
                     f"{'ok' if r.ok else 'FAIL'}")
    bad = [r for r in results if not r.ok]
    lines.append("-" * 92)
    lines.append(f"{len(results) - len(bad)} passed, {len(bad)} failed")
    for r in bad:
        lines.append(f"  {r.variant} {r.dtype}: worst at {r.worst}")
    return "\n".join(lines)


def main(args) -> int:
    results = verify(args.names or None, samples=args.samples, steps=args.steps, seed=args.seed)
    print(format_table(results))
    return 0 if all(r.ok for r in results) else 1
