"""Rules with reductions: the read-only passes and per-tensor scalars, on every runtime path.

LAMB (two per-tensor norms, bias corrections per step) and a global-norm clip are checked
against NumPy in float64 (relative error ≤ 1e-12) with the threaded kernels, tensors split
into several chunks, a tensor without gradient, tensors at different step counts and two
param groups; a NaN gradient leaves everything untouched; ``symopt verify`` handles a
composed rule's reductions; rules without reductions have no reduction kernel.
"""
import numpy as np
import pytest
from conftest import rel_err
from rule_db import RULE_DB

import symopt
from symopt import NonFiniteGradientError
from symopt.rulebook import transforms as T


def test_lamb_threaded_chunked_groups_skipped_and_lagging_tensors(rng):
    shapes = [(7, 500), (3000,), (4,)]
    params = [rng.uniform(1, 2, s) for s in shapes]
    ref = [p.copy() for p in params]
    lamb = RULE_DB["lamb"].reference    # stepped per tensor: each has its own state and step count
    states = [{} for _ in params]
    lrs = [1e-2, 1e-2, 3e-2]
    opt = symopt.optimizer("lamb", [{"params": params[:2], "lr": 1e-2}, {"params": params[2:], "lr": 3e-2}],
                           weight_decay=0.01)
    opt.parallel_threshold = 0           # the threaded kernels (when numba has 2+ threads)
    steps = [0, 0, 0]
    for k in range(12):
        grads = [rng.standard_normal(s) for s in shapes]
        if k in (3, 4):
            grads[1] = None              # tensor 1 skips two steps: then the tensors' t differ
        opt.step(grads)
        for j, g in enumerate(grads):
            if g is not None:
                steps[j] += 1
                lamb([ref[j]], [g], states[j], steps[j], lr=lrs[j], weight_decay=0.01)
    for p, r in zip(params, ref):
        assert rel_err(p, r) <= 1e-12
    assert [opt.state[j]["step"] for j in range(3)] == [12, 10, 12]
    if symopt.get_num_threads() > 1:
        assert opt._reduce.parallel.signatures  # the threaded reduction pass ran


def test_global_norm_clip_counts_only_tensors_with_gradients(rng):
    rule = symopt.compose("notes.gd", T.clip_global_norm(0.5))
    params = [rng.standard_normal(6), rng.standard_normal(4)]
    ref = [p.copy() for p in params]
    opt = symopt.optimizer(rule, params, lr=0.1)
    for k in range(4):
        grads = [rng.standard_normal(6), None if k % 2 else rng.standard_normal(4)]
        opt.step(grads)
        live = [g for g in grads if g is not None]
        norm = np.sqrt(sum(float(np.sum(g * g)) for g in live))
        for r, g in zip(ref, grads):
            if g is not None:
                r -= 0.1 * g * min(1.0, 0.5 / (norm + 1e-6))
    for p, r in zip(params, ref):
        assert rel_err(p, r) <= 1e-12


def test_nonfinite_gradient_changes_nothing_with_reductions(rng):
    params = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    opt = symopt.optimizer("lamb", params)
    opt.step([rng.standard_normal((3, 4)), rng.standard_normal(5)])
    before = [p.copy() for p in params] + [opt.state[0]["mu"].copy()]
    bad = rng.standard_normal(5)
    bad[2] = np.nan
    with pytest.raises(NonFiniteGradientError):
        opt.step([rng.standard_normal((3, 4)), bad])
    assert all(np.array_equal(a, b) for a, b in zip(before, [*params, opt.state[0]["mu"]]))
    assert opt.state[0]["step"] == 1


def test_verify_handles_a_composed_rule_with_reductions():
    from symopt.rulebook.rule import Family
    from symopt.verify.check import verify_variant

    rule = symopt.compose("notes.adam_warmup", T.cautious(), T.clip_global_norm(1.0))
    fam = Family.of(rule)
    res = verify_variant(fam, rule, "float64", samples=40, steps=2)
    assert res.ok, res


def test_only_rules_with_reductions_get_reduction_kernels():
    from symopt.codegen.plan import make_plan

    assert make_plan(symopt.rule("adam")).reduction is None
    plan = make_plan(symopt.rule("lamb"))
    assert plan.reduction is not None and len(plan.reduction.reductions) == 2
    assert len(plan.reduction.stages) == 1                      # ‖θ‖ and ‖u‖ in one pass
    assert not hasattr(symopt.optimizer("adam", [np.zeros(2)]), "_reduce") or \
        symopt.optimizer("adam", [np.zeros(2)])._reduce is None
    import symopt.generated.adam as adam_mod
    import symopt.generated.lamb as lamb_mod

    assert not any("_reduce_" in n for n in dir(adam_mod))
    assert {"lamb_reduce_f32", "lamb_reduce_f64_parallel"} <= set(dir(lamb_mod))
    nested = make_plan(symopt.compose("lamb", T.clip_global_norm(1.0)))
    assert len(nested.reduction.stages) == 2                    # ‖u‖ reads the clipped gradient: 2 passes


def _clipped_adam_step(p, g, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, max_norm=1.0):
    """One step (t = 1) of Adam on a gradient clipped to global norm ``max_norm`` (torch's ε = 1e-6),
    NumPy float64; returns (param, m, v)."""
    g = np.asarray(g, np.float64)
    f = min(1.0, max_norm / (np.sqrt(np.sum(g * g)) + 1e-6))
    m, v = (1 - b1) * (f * g), (1 - b2) * (f * g) ** 2
    return np.asarray(p, np.float64) - lr * (m / (1 - b1)) / (np.sqrt(v / (1 - b2)) + eps), m, v


@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clipped_gradient_is_scaled_before_it_is_squared(rng, dtype, decoupled):
    """compose("adam", clip_global_norm(1.0)): Adam's v gets (f g)², f = min(1, c/(‖g‖ + ε)), computed as
    written -- never g² f² (SymPy's expansion, which the decoupled-decay branch used to get), whose g²
    overflows (0 · inf = NaN once ‖g‖ is inf) or whose f² leaves float32's normal range.  float64: gradients of 1e155, ‖g‖² beyond the range, so f = 0
    in NumPy too: the step leaves everything finite and the param as it was.  float32: |g| ~ 1e19 over
    1000 elements (g² in range, f² ~ 1e-41 subnormal): v within 1e-6 (relative, a few float32
    roundings) and the param within 1e-6 of NumPy in float64."""
    rule = symopt.compose("adam", T.clip_global_norm(1.0))
    if dtype == np.float64:
        p = rng.standard_normal(8)
        g = rng.standard_normal(8)
        g[[1, 5]] = [1e155, -3e154]
    else:
        p = rng.standard_normal(1000).astype(np.float32)
        g = (rng.uniform(0.5, 1.0, 1000) * rng.choice([-1.0, 1.0], 1000) * 1e19).astype(np.float32)
    start = p.copy()
    opt = symopt.optimizer(rule, [p], decoupled_weight_decay=decoupled)
    opt.step([g])
    with np.errstate(over="ignore", invalid="ignore"):
        ref_p, ref_m, ref_v = _clipped_adam_step(start, g)
    state = opt.state[0]
    if dtype == np.float64:
        assert np.array_equal(p, start) and np.array_equal(ref_p, start)
        assert np.array_equal(state["exp_avg"], ref_m) and np.array_equal(state["exp_avg_sq"], ref_v)
    else:
        assert rel_err(state["exp_avg_sq"], ref_v) <= 1e-6
        assert rel_err(state["exp_avg"], ref_m) <= 1e-6
        assert rel_err(p, ref_p) <= 1e-6


def test_reduction_pass_computes_the_updated_value_its_argument_uses(rng):
    """d = g - m_t with m_t updated first (an UpdatedValue), normalized by the RMS of d over the tensor:
    the read-only pass computes m_t itself before it accumulates d².  float64 against NumPy,
    relative error <= 1e-12."""
    import sympy as sp

    from symopt.codegen.plan import UpdatedValue, make_plan
    from symopt.rulebook.reduction import TensorMean

    p, g, m, d = sp.symbols("p g m d")
    lr, b, eps = sp.symbols("lr b eps")
    rule = symopt.Rule("rms normalized prediction error", param=p, grad=g, state={m: 0},
                       hyper={lr: 0.1, b: 0.9, eps: 1e-12},
                       updates=[(m, b * m + (1 - b) * g), (d, g - m), (p, p - lr * d / sp.sqrt(TensorMean(d**2) + eps))])
    (stage,) = make_plan(rule).reduction.stages
    assert [type(s) for s, _ in stage.element_temps] == [UpdatedValue] and stage.reads == (g, m)
    params = [rng.standard_normal(50), rng.standard_normal((4, 3))]
    ref = [x.copy() for x in params]
    moms = [np.zeros_like(x) for x in params]
    opt = symopt.optimizer(rule, params, lr=0.1)
    for _ in range(3):
        grads = [rng.standard_normal(x.shape) for x in params]
        opt.step(grads)
        for r, mom, gr in zip(ref, moms, grads):
            mom[...] = 0.9 * mom + 0.1 * gr
            diff = gr - mom
            r -= 0.1 * diff / np.sqrt(np.mean(diff**2) + 1e-12)
    for x, r in zip(params, ref):
        assert rel_err(x, r) <= 1e-12


def test_updated_state_is_subtracted_as_written_in_a_rule_with_reductions(rng):
    """compose("adabelief", clip_global_norm): s gets (g_c - m_t)² with m_t computed first, as in the rule
    without reductions.  With b1 = 6.7e-182 (1 - b1 rounds to 1) m_t equals g_c, so g_c - m_t is exactly 0
    and s stays 0 (eps_root = 0); SymPy's expansion g_c (b1 - 1) + g_c - b1 m kept -b1 m (~1e-82 with
    |g| ~ 1e100, s ~ 1e-167).  The param against NumPy float64 within 1e-12 (relative)."""
    rule = symopt.compose("adabelief", T.clip_global_norm(1.0))
    kw = {"lr": 1e-3, "b1": 6.686586398254087e-182, "b2": 0.999, "eps": 1e-16, "eps_root": 0.0,
          "max_norm": 1e300}
    x = rng.standard_normal(20)
    ref, m, s = x.copy(), np.zeros(20), np.zeros(20)
    opt = symopt.optimizer(rule, [x], **kw)
    for t in range(1, 4):
        g = rng.standard_normal(20) * 1e100
        opt.step([g])
        gc = g * min(1.0, 1e300 / (1e-6 + np.sqrt(np.sum(g * g))))
        m = kw["b1"] * m + (1 - kw["b1"]) * gc
        s = kw["b2"] * s + (1 - kw["b2"]) * (gc - m) ** 2
        ref -= kw["lr"] * (m / (1 - kw["b1"] ** t)) / (kw["eps"] + np.sqrt(s / (1 - kw["b2"] ** t)))
    assert not np.any(opt.state[0]["nu"])
    assert rel_err(x, ref) <= 1e-12
