"""Property tests (hypothesis): every rule, random valid hyperparameters and arrays, equals its
NumPy reference within a stated tolerance, step by step.

Table-driven over ``tests/rule_db.py``: each rule's NumPy reference (a rule without one is
checked against its own SymPy updates evaluated with mpmath at 30 digits, through the
helpers of :mod:`symopt.verify.check`, in float64 and on normal-range values only --
mpmath is exact whatever the dtype, so it cannot tell where the dtype's own range ends;
that path is exercised on ``adam`` by ``test_mpmath_fallback_agrees``).

Each hypothesis example draws

* the dtype (float32 or float64);
* every keyword: bools (so every variant is reached), and each float from its valid range
  -- the default, the bounds themselves when closed, values 1e-6 inside open bounds,
  uniform values when both bounds are finite, else log-uniform from 1e-3 to 10 times the
  default; value sets the rule (or its reference) refuses, such as nesterov without
  momentum, are discarded;
* 1 to 3 steps from the initial state, and a seed from which a *batch* of 48 elements
  (two tensors, 4x8 and 16) is built per param and per gradient: signed zeros,
  subnormals, values near the smallest normal, unit values, and log-uniform magnitudes
  from the smallest normal up to ``1e-4 * sqrt(max)`` (so that squares stay
  representable: beyond, float32 arithmetic overflows whatever the rule).

Every step is checked on its own: the reference step starts from exactly the kernel's
params and state before that step (the reference builds its own state at step 1) and is
computed three ways -- in a wider type (float64 for float32 kernels, x87 long double with
long-double hyperparameters for float64 kernels: the "exact" value ``ref``), in the
kernel's own dtype (the witness ``w``), and twice more in the wider type with every array
element scaled by ``1 ± eps`` and every hyperparameter by ``1 ± 2**-52`` (random signs: the
step's conditioning ``sens``).  For the param and every state buffer the reference keeps
(by ``state_dict`` key), per element::

    |kernel - ref| <= 8 sens + 64 |w - ref| + 128 eps max(|ref|, |before|) + 64 tiny

(``eps``, ``tiny``: the dtype's machine epsilon and smallest normal; ``before``: the value
before the step; ``eps`` is raised to ``2**-52 / (1 - β)`` for the β-like keyword closest to 1,
since per-step scalars like ``(1 - β)/(1 - β**t)`` are float64 formulas whose rounding grows
that way), widened by ``1e-2 max(|ref|, |before|) + 1e-26`` (float32) /
``1e-280`` (float64) for elements with a nonzero input below ``1e4 sqrt(tiny)``, whose
intermediates can be subnormal.  An element is not compared where ``ref`` is not finite or
not representable in the dtype, or where the dtype itself cannot evaluate the formula
(``|w - ref|`` above 1 % -- e.g. ``g / sqrt(g**2)`` with ``g**2`` below float32's range);
a step whose reference holds a NaN (0/0 for ``eps = 0``) ends the example, since a
reduction would carry it to every element.  The table's ``known_issues`` list the
discrepancies this test found and how their triggers are kept out of the draws.

Examples per rule: ``SYMOPT_PROPERTY_EXAMPLES`` hypothesis examples (default 40 for a quick
local run; ``make test``, hence CI, sets 1000), each a batch of 48 elements over 1-3 steps;
each rule asserts that at least 1000 element-steps of the param were compared (2200-4100 at
40 examples, 74 000-88 000 at 1000).  ``derandomize=True``: CI is reproducible.
"""
import inspect
import math
import os
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rule_db import ELEMENTWISE, RULE_DB

import symopt
from symopt.runtime.kernels import load_builtin

EXAMPLES = int(os.environ.get("SYMOPT_PROPERTY_EXAMPLES", "40"))
MIN_CASES = 1000
SHAPES = [(4, 8), (16,)]
C_SENS, C_WITNESS, C_REL, C_ABS = 8.0, 64.0, 128.0, 64.0
#: An element is outside the dtype's domain when the reference computed in the dtype itself is off
#: by more than this fraction (e.g. g / sqrt(g**2) with g**2 below float32's range).
C_DOMAIN = 1e-2
#: Relative tolerance of the mpmath fallback (float64): mpmath is exact, so the float64 rounding of
#: ill-conditioned per-step scalars (1 - β2^t with β2 = 1 - 1e-6) has no witness to be judged by.
MPMATH_REL = 1e-10
#: Elements with a nonzero input below this (times the dtype's sqrt(tiny)) may have subnormal
#: intermediates, where float32 keeps only a few significant bits: they get the wide tolerance.
SMALL_FACTOR = 1e4
WIDE_REL = {np.dtype(np.float32): 1e-2, np.dtype(np.float64): 1e-2}
WIDE_ABS = {np.dtype(np.float32): 1e-26, np.dtype(np.float64): 1e-280}  # subnormal quantum / eps >= 1e-19


# ------------------------------------------------------------------------------- strategies
def _float_values(h):
    """Valid values of a float hyperparameter: the default, closed bounds, values just inside open
    bounds, uniform values when both bounds are finite, else log-uniform from 1e-3 to 10 times the
    default (zero included when it is a closed bound)."""
    lo = -math.inf if h["low"] is None else h["low"]
    hi = math.inf if h["high"] is None else h["high"]
    d = float(h["default"])
    options = [st.just(d)]
    for edge, is_open, inward in ((lo, h["low_open"], 1.0), (hi, h["high_open"], -1.0)):
        if math.isfinite(edge):
            options.append(st.just(edge + inward * 1e-6 * max(1.0, abs(edge)) if is_open else edge))
    if math.isfinite(lo) and math.isfinite(hi):
        options.append(st.floats(lo, hi, exclude_min=h["low_open"], exclude_max=h["high_open"]))
    else:
        scale = abs(d) if d != 0 else 1e-3
        sign = -1.0 if (d < 0 or (d == 0 and hi <= 0)) else 1.0
        options.append(st.floats(-3.0, 1.0).map(lambda e: sign * scale * 10.0 ** e))

    def inside(x):
        return (lo < x < hi) or (x == lo and not h["low_open"]) or (x == hi and not h["high_open"])

    return st.one_of(options).filter(inside)


def _hyper_strategy(name):
    fam = load_builtin(name).FAMILY
    defaults = symopt.optimizer(name, [np.zeros(1)]).defaults
    parts = {}
    for h in fam["hyper"]:
        slot = (h["key"], h["index"])
        parts[slot] = st.booleans() if h["kind"] == "bool" else _float_values(h)

    @st.composite
    def draw(draw_fn):
        kw = {}
        for (key, index), strat in parts.items():
            value = draw_fn(strat)
            if index is None:
                kw[key] = value
            else:
                kw.setdefault(key, list(defaults[key]))[index] = value
        return {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}

    return draw()


def _values(rng, shape, dtype, role, normal_only=False):
    """Signed zeros, subnormals, near-tiny, unit and wide-range magnitudes (see the module doc);
    ``normal_only``: no subnormal or near-tiny values."""
    fi = np.finfo(dtype)
    limit = math.sqrt(float(fi.max)) * 1e-4
    n = int(np.prod(shape))
    p = [0.1, 0.0, 0.0, 0.45, 0.45] if normal_only else [0.08, 0.08, 0.08, 0.36, 0.40]
    kind = rng.choice(5, size=n, p=p)
    lo_sub, tiny = math.log10(float(fi.smallest_subnormal)), math.log10(float(fi.tiny))
    mag = np.empty(n)
    mag[kind == 0] = 0.0
    mag[kind == 1] = 10.0 ** rng.uniform(lo_sub, tiny, (kind == 1).sum())
    mag[kind == 2] = 10.0 ** rng.uniform(tiny, tiny + 3, (kind == 2).sum())
    mag[kind == 3] = 10.0 ** rng.uniform(tiny, math.log10(limit), (kind == 3).sum())
    mag[kind == 4] = np.abs(rng.standard_normal((kind == 4).sum()))
    out = (mag * rng.choice([-1.0, 1.0], n)).astype(dtype)
    return out.reshape(shape)


# ------------------------------------------------------------------------------ references
def _reference_step(fn, params, state, grads, t, hyper, dtype, perturb=None):
    """One reference step from the given params and state, computed in ``dtype`` (copies).

    With ``perturb``, every array element is scaled by ``1 ± perturb.eps`` and every float
    hyperparameter by ``1 ± 2**-52`` (per-step scalars are float64 in the kernels), random
    signs.  Returns float64 (params, {key: [arrays]}).
    """
    def arr(x):
        x = np.array(x, dtype=dtype)
        if perturb is not None:
            x = x * (1.0 + perturb.signs(x.shape) * perturb.eps)
        return x

    def hyp(v):
        if isinstance(v, bool):
            return v
        if isinstance(v, tuple):
            return tuple(hyp(x) for x in v)
        if dtype == np.longdouble:  # the exact reference: per-step scalars in extended precision too
            v = np.longdouble(v)
        if perturb is None:
            return v
        return v * (1.0 + float(perturb.signs(())) * 2.0**-52)

    ps = [arr(p) for p in params]
    st = {key: [arr(x) for x in bufs] for key, bufs in state.items()}
    gs = [arr(g) for g in grads]
    with np.errstate(all="ignore"):  # long double -> float64 may overflow: compared as not representable
        fn(ps, gs, st, t, **{k: hyp(v) for k, v in hyper.items()})
        return ([np.array(p, dtype=np.float64) for p in ps],
                {k: [np.array(x, dtype=np.float64) for x in v] for k, v in st.items()
                 if isinstance(v, list) and len(v) == len(ps) and all(np.shape(x) == p.shape for x, p in zip(v, ps))})


class _Perturb:
    def __init__(self, seed, eps):
        self.rng = np.random.default_rng(seed)
        self.eps = eps

    def signs(self, shape):
        return self.rng.choice([-1.0, 1.0], shape)


def _mpmath_reference(name):
    """A reference step from the rule's own SymPy updates, evaluated per element with mpmath."""
    import mpmath
    import sympy as sp

    from symopt.rulebook.catalog import family as get_family
    from symopt.rulebook.metadata import t as t_sym
    from symopt.verify.check import exact_step, mp_functions

    fam = get_family(name)

    def fn(params, grads, state, t, **hyper):
        values = {}
        for sym, h in fam.hyper.items():
            raw = hyper[h.key or sym.name]
            raw = raw[h.index] if h.index is not None else raw
            values[sym] = raw if isinstance(raw, bool) else float(raw)
        rule = fam.select(values)
        from symopt.rulebook.reduction import has_reductions

        if has_reductions(rule):
            raise RuntimeError(f"{name}: no NumPy reference and the rule has reductions; mpmath cannot stand in")
        hv = {s: (1 if v else 0) if isinstance(v, bool) else mpmath.mpf(float(v)) for s, v in values.items()}
        keys = {rule.state_key(s): s for s in rule.state}
        if not state:
            for key, sym in keys.items():
                init = sp.sympify(rule.state[sym].init)
                state[key] = [p.copy() if init == rule.param else
                              np.full_like(p, float(init.xreplace({s: sp.Float(float(v)) for s, v in hv.items()})))
                              for p in params]
        symbols, fns = mp_functions(rule)
        mpmath.mp.dps = 30
        for j, (p, g) in enumerate(zip(params, grads)):
            flat_p, flat_g = p.reshape(-1), g.reshape(-1)
            flats = {key: state[key][j].reshape(-1) for key in keys}
            for i in range(flat_p.size):
                vals = {rule.param: mpmath.mpf(float(flat_p[i])), rule.grad: mpmath.mpf(float(flat_g[i])),
                        t_sym: t, **hv}
                for key, sym in keys.items():
                    vals[sym] = mpmath.mpf(float(flats[key][i]))
                env = exact_step(rule, symbols, fns, vals)
                flat_p[i] = float(env[rule.param])
                for key, sym in keys.items():
                    flats[key][i] = float(env[sym])

    return fn


# -------------------------------------------------------------------------------- the check
def _scalar_condition(kw, fam) -> float:
    """1 / (1 - β) for the β-like hyperparameter closest to 1 (open upper bound 1), else 1: per-step
    scalars such as (1 - β)/(1 - β^t) are float64 formulas whose relative error grows like ε64/(1 - β)."""
    kappa = 1.0
    for h in fam["hyper"]:
        if h["kind"] == "float" and h["high"] == 1 and h["high_open"] and h["key"] in kw:
            value = kw[h["key"]] if h["index"] is None else kw[h["key"]][h["index"]]
            kappa = max(kappa, 1.0 / max(1.0 - float(value), 1e-300))
    return kappa


def _compare(label, got, ref, sens, before, dtype, failures, witness, small, rel_floor=0.0):
    """Count of compared elements; appends descriptions of violations to ``failures``.

    ``witness``: the same reference computed in ``dtype`` itself; where it is not finite or
    not within the bound of the float64 reference, the formula cannot be evaluated in this
    dtype at these inputs (e.g. ``g / sqrt(g**2)`` with ``g**2`` below float32's range), so
    the element is outside the domain and not compared.
    """
    fi = np.finfo(dtype)
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    ref, sens, before = ref.reshape(-1), sens.reshape(-1), np.asarray(before, np.float64).reshape(-1)
    valid = np.isfinite(ref) & (np.abs(ref) <= float(fi.max)) & np.isfinite(sens)
    scale = np.maximum(np.abs(ref), np.abs(before))
    with np.errstate(invalid="ignore", over="ignore"):
        w = np.asarray(witness, dtype=np.float64).reshape(-1) if witness is not None else ref
        werr = np.abs(w - ref)
        valid &= np.isfinite(w) & (werr <= C_DOMAIN * (np.abs(ref) + scale) + float(fi.tiny) ** 0.5)
        bound = (C_SENS * sens + C_WITNESS * werr + max(C_REL * float(fi.eps), rel_floor) * scale
                 + C_ABS * float(fi.tiny))
        if small is not None:
            dt = np.dtype(dtype)
            bound = np.where(small.reshape(-1), bound + WIDE_REL[dt] * scale + WIDE_ABS[dt], bound)
        if not valid.any():
            return 0
        err = np.abs(got - ref)
    bad = valid & ~(err <= bound)
    if bad.any():
        i = int(np.argmax(np.where(bad, err / np.maximum(bound, 1e-300), 0)))
        failures.append(f"{label}[{i}]: kernel {got[i]!r}, reference {ref[i]!r} (|err| {err[i]:.3e} > "
                        f"bound {bound[i]:.3e}; before {before[i]!r}, sens {sens[i]:.3e}), {int(bad.sum())} elements")
    return int(valid.sum())


# ----------------------------------------------------------------------------- known issues
# Fixed (kept out of the table's known issues, checked by the regression tests below): mars_adamw's
# normalized c entered v as c² · (1 - β2)/‖c‖² -- SymPy distributes the square over c/‖c‖ and the planner hoisted
# the per-tensor factor -- so float32 lost precision once (1 - β2)/‖c‖² was subnormal, and c² overflowed
# to inf (0 · inf = NaN in v and the param) once ‖c‖ did.  The planner now scales, then squares.
# Also fixed: AdaBelief's (g - m_t)² reached the kernel expanded as g (β1 - 1) + g - β1 m, which for
# 0 < β1 < 2**-53 kept -β1 m where g - m_t is 0 (a state off by ~1e-87 with g ~ 1e140).  The planner now
# computes an updated state that a later update subtracts first (plan.UpdatedValue).


def _exclude_known(name, kw, dtype, grads, fam):
    """The example with the triggers of the rule's known issues (``tests/rule_db.py``) replaced."""
    for issue in RULE_DB[name].known_issues:
        kw, grads = issue.exclude(name, kw, dtype, grads, fam)
    return kw, grads


def _check_example(name, fn, kw, dtype, steps, seed, counter, normal_only=False):
    rng = np.random.default_rng(seed)
    params = [_values(rng, s, dtype, "param", normal_only) for s in SHAPES]
    grads = [[_values(rng, s, dtype, "grad", normal_only) for s in SHAPES] for _ in range(steps)]
    kw, grads = _exclude_known(name, kw, dtype, grads, load_builtin(name).FAMILY)
    _check_steps(name, fn, kw, dtype, params, grads, seed, counter, normal_only)


def _check_steps(name, fn, kw, dtype, params, grads, seed, counter, normal_only=False):
    """Steps ``grads`` (one list of arrays per step, shaped as ``params``: arrays of ``dtype``) from
    ``params`` and checks every step as the module doc says; ``seed`` seeds the perturbations."""
    rel_floor_base = MPMATH_REL if normal_only else 0.0
    steps = len(grads)
    try:
        opt = symopt.optimizer(name, params, **kw)
    except (ValueError, TypeError):
        assume(False)  # a value set the rule refuses (e.g. nesterov without momentum)
    hyper = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    eps = float(np.finfo(dtype).eps)
    rel_floor = max(rel_floor_base, C_REL * 2.0**-52 * _scalar_condition(kw, load_builtin(name).FAMILY))
    failures = []
    compared = 0
    nt = len(params)
    for k in range(steps):
        # Reference step from exactly the kernel's current params and state (the reference
        # initializes its own state at the first step), and two perturbed copies of it.
        before_p = [p.astype(np.float64) for p in params]
        mine = opt.state
        keys = [key for key, v in mine[0].items() if isinstance(v, np.ndarray)]
        before_s = {key: [np.array(mine[j][key], np.float64) for j in range(nt)] for key in keys}
        if not all(np.isfinite(x).all() for x in [*before_p, *(b for bufs in before_s.values() for b in bufs)]):
            break  # an earlier step left the dtype's range (compared as such above): inputs must be finite
        sync = {} if k == 0 else before_s
        wide = np.longdouble if dtype == np.float64 else np.float64
        try:
            rp, rstate = _reference_step(fn, before_p, sync, grads[k], k + 1, hyper, wide)
            perturbed = [_reference_step(fn, before_p, sync, grads[k], k + 1, hyper, wide,
                                         _Perturb(seed * 7 + 3 * k + r, eps)) for r in range(2)]
            wp, ws = _reference_step(fn, before_p, sync, grads[k], k + 1, hyper, dtype)
        except (ValueError, ZeroDivisionError, OverflowError, FloatingPointError):
            # the reference refuses these values (e.g. math.sqrt of a negative for
            # adabelief_rectified below n_sma_threshold = 4): outside its domain
            assume(k > 0)
            break
        if any(np.isnan(x).any() for x in [*rp, *(b for bufs in rstate.values() for b in bufs)]):
            # the rule is undefined here (0/0 for eps = 0 and a zero gradient); a reduction (norm,
            # RMS, count) would carry the NaN to every element, each side in its own way
            assume(k > 0)
            break
        limit = math.sqrt(float(np.finfo(dtype).tiny)) * SMALL_FACTOR
        small = []
        for j in range(nt):
            ins = [before_p[j], np.asarray(grads[k][j], np.float64), *(bufs[j] for bufs in before_s.values())]
            small.append(np.any([(x != 0) & (np.abs(x) < limit) for x in ins], axis=0))
        opt.step(grads[k])
        mine = opt.state
        for j in range(nt):
            with np.errstate(invalid="ignore"):
                sens = np.max([np.abs(pp[j] - rp[j]) for pp, _ in perturbed], axis=0)
            compared += _compare(f"step {k + 1} param {j}", params[j], rp[j], sens, before_p[j], dtype, failures,
                                 wp[j], small[j], rel_floor)
            for key, bufs in rstate.items():
                if key not in mine[j]:
                    continue
                with np.errstate(invalid="ignore"):  # inf - inf: NaN sensitivity, an element not compared
                    sens = np.max([np.abs(ps[key][j] - bufs[j]) if key in ps else np.full(bufs[j].shape, np.inf)
                                   for _, ps in perturbed], axis=0)
                _compare(f"step {k + 1} state {key!r} of param {j}", mine[j][key], bufs[j], sens,
                         before_s[key][j] if key in before_s else np.zeros(bufs[j].shape), dtype, failures,
                         ws[key][j] if key in ws else None, small[j], rel_floor)
    counter["examples"] += 1
    counter["elements"] += compared
    if failures:
        shown = {k: (v if not isinstance(v, float) else float(v)) for k, v in kw.items()}
        raise AssertionError(f"{name} {np.dtype(dtype).name}, {steps} step(s), seed {seed}, {shown} "
                             f"(variant {opt.variant}):\n  " + "\n  ".join(failures[:6]))


def _run_property(name, fn, examples, dtypes=(np.float32, np.float64), normal_only=False):
    counter: Counter = Counter()
    hypers = _hyper_strategy(name)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True, print_blob=True,
              suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
    @given(kw=hypers, dtype=st.sampled_from(list(dtypes)), steps=st.integers(1, 3),
           seed=st.integers(0, 2**32 - 1))
    def check(kw, dtype, steps, seed):
        _check_example(name, fn, kw, dtype, steps, seed, counter, normal_only)

    check()
    return counter


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_rule_matches_reference_on_random_valid_inputs(name):
    reference = RULE_DB[name].reference
    if reference is not None:
        counter = _run_property(name, reference, EXAMPLES)
    else:  # mpmath evaluates exactly, whatever the dtype: it cannot tell the dtype's own range limits
        counter = _run_property(name, _mpmath_reference(name), EXAMPLES, dtypes=(np.float64,), normal_only=True)
    print(f"{name}: {counter['examples']} examples, {counter['elements']} element-steps compared")
    assert counter["elements"] >= MIN_CASES, f"{name}: only {counter['elements']} element-steps were compared"


def _regression_arrays(dtype, big):
    """Two tensors: a subnormal, signed zeros, unit and small values, and gradients of magnitude ``big``
    next to unit ones (so that ‖c‖ is dominated by them), two steps."""
    tiny = float(np.finfo(dtype).smallest_subnormal)
    p0 = np.array([3.6e-314 if dtype == np.float64 else 3.6e-42, -0.0, 1.0, -2.5, 1e-3, 0.0, 7.0, -tiny],
                  dtype=dtype)
    p1 = np.array([[0.5, -0.25, 3.6e-314 if dtype == np.float64 else 1e-40], [2.0, -1.0, 0.0]], dtype=dtype)
    g = [[np.array([big, -big / 3, 0.5, 0.0, -1.0, big / 7, 1e-3, 2.0], dtype=dtype),
          np.array([[big / 2, 1.0, -0.5], [0.0, -big, 0.25]], dtype=dtype)],
         [np.array([-big / 5, big, 0.25, 1.0, -0.0, 0.5, big / 11, -2.0], dtype=dtype),
          np.array([[1.0, -big / 3, 0.5], [big, 0.0, -0.75]], dtype=dtype)]]
    return [p0, p1], g


#: (dtype, lr, gradient magnitude, param element-steps compared): the property tests' failing draw
#: (float64, lr = 0, β1 = 0.999999, a subnormal param, ‖c‖² above float64's range: the param became
#: NaN), the same with a learning rate (where float64 NumPy's own ‖c‖ overflows, the elements are
#: outside the dtype's domain and not compared), a float64 norm in range, and float32 with c² in range
#: but ‖c‖² not (7e14: NaN at step 2), with c² out of range too (1e15) and with both in range (3e14).
#: Both tensors, both steps: 28 param element-steps.
SCALED_SQUARE_CASES = [(np.float64, 0.0, 1e150, 28), (np.float64, 3e-3, 1e150, 16), (np.float64, 0.0, 1e140, 28),
                       (np.float32, 0.0, 7e14, 28), (np.float32, 0.0, 1e15, 28), (np.float32, 3e-3, 3e14, 28)]


@pytest.mark.parametrize("dtype,lr,big,compared", SCALED_SQUARE_CASES,
                         ids=[f"{np.dtype(d).name}-lr{lr}-g{big:.0e}" for d, lr, big, _ in SCALED_SQUARE_CASES])
def test_mars_adamw_scaled_square_regression(dtype, lr, big, compared):
    """Regression: the property tests' mars_adamw failure (lr = 0, betas (0.999999, 0.99), gamma
    0.025, a subnormal param 3.6e-314 became NaN) and its float32 relatives, checked against the
    NumPy reference with this file's per-dtype bounds; with lr = 0 the param must not move at all."""
    kw = {"lr": lr, "betas": (0.999999, 0.99), "gamma": 0.025}
    params, grads = _regression_arrays(dtype, big)
    start = [p.copy() for p in params]
    counter: Counter = Counter()
    _check_steps("mars_adamw", RULE_DB["mars_adamw"].reference, kw, dtype, params, grads, 7, counter)
    assert counter["elements"] >= compared
    assert all(np.isfinite(p).all() for p in params)
    if lr == 0.0:  # p (1 - 0 λ) - 0 · m̂ / d: the reference keeps the param (a zero's sign aside)
        assert all(np.array_equal(p, s) for p, s in zip(params, start))


#: (rule, keywords) of the property tests' AdaBelief failure (float64, b1 = 6.7e-182: 1 - b1 rounds to 1,
#: gradients ~1e140) and its relatives: the rectified variant and an ordinary b1.
EXPANDED_DIFFERENCE_CASES = [("adabelief", {"lr": 1e-3, "b1": 6.686586398254087e-182, "b2": 0.999, "eps": 1e-16,
                                            "eps_root": 0.0}),
                             ("adabelief", {"lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-16, "eps_root": 0.0}),
                             ("adabelief_rectified", {"lr": 1e-3, "betas": (0.5, 0.999), "eps": 1e-16})]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name,kw", EXPANDED_DIFFERENCE_CASES, ids=["adabelief-tiny-b1", "adabelief", "rectified"])
def test_updated_state_is_computed_before_it_is_subtracted(name, kw, dtype):
    """Regression: the state of a rule that subtracts an updated state (AdaBelief's g - m_t) against the
    NumPy reference with this file's bounds, with gradients near the dtype's range."""
    big = 1e140 if dtype == np.float64 else 1e15
    params, grads = _regression_arrays(dtype, big)
    counter: Counter = Counter()
    _check_steps(name, RULE_DB[name].reference, kw, dtype, params, grads, 11, counter)
    assert counter["elements"] >= 20


def test_mpmath_fallback_agrees():
    """The fallback for rules without a NumPy reference, checked on a rule that has one."""
    counter = _run_property("adam", _mpmath_reference("adam"), 8, dtypes=(np.float64,), normal_only=True)
    assert counter["examples"] >= 4


def test_references_take_the_rules_keywords():
    for name, info in RULE_DB.items():
        if info.reference is not None:
            params = inspect.signature(info.reference).parameters
            keys = symopt.optimizer(name, [np.zeros(1)]).defaults
            takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            assert takes_all or set(keys) <= set(params), f"{name}: reference lacks {set(keys) - set(params)}"
