"""The runtime contract: in-place steps, param groups, live hyperparameters, state dicts, bad input."""
import copy
import subprocess
import sys

import numpy as np
import pytest

import symopt
from symopt import NonFiniteGradientError

from conftest import rel_err

DTYPES = [np.float32, np.float64]


def _params(dtype, rng):
    return [rng.standard_normal((6, 5)).astype(dtype), rng.standard_normal(5).astype(dtype)]


def _grads(params, rng):
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def _adam_warmup_ref(p, g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-9):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mh = m / (1 - b1**t)
    vh = v / (1 - b2**t)
    return p - lr * mh / np.sqrt(vh + eps), m, v


@pytest.mark.parametrize("dtype", DTYPES)
def test_step_updates_in_place_and_matches_reference(dtype, rng):
    params = _params(dtype, rng)
    ids = [id(p) for p in params]
    ref = [p.astype(np.float64) for p in params]
    ms = [np.zeros_like(r) for r in ref]
    vs = [np.zeros_like(r) for r in ref]
    opt = symopt.optimizer("notes.adam_warmup", params, lr=0.01)
    for t in range(1, 11):
        grads = _grads(params, rng)
        opt.step(grads)
        for k in range(2):
            ref[k], ms[k], vs[k] = _adam_warmup_ref(ref[k], grads[k].astype(np.float64), ms[k], vs[k], t, 0.01)
    assert [id(p) for p in opt.params] == ids
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for p, r in zip(params, ref):
        assert p.dtype == dtype
        assert rel_err(p, r) < tol


def test_lr_change_takes_effect_without_recompiling(rng):
    params = [np.zeros(4)]
    opt = symopt.optimizer("notes.gd", params, lr=0.5)
    g = np.ones(4)
    opt.step([g])
    sigs = len(opt._kernel_serial.signatures)
    opt.param_groups[0]["lr"] = 0.25
    opt.step([g])
    np.testing.assert_array_equal(params[0], -0.75 * np.ones(4))
    assert len(opt._kernel_serial.signatures) == sigs


def test_param_groups_with_own_hyperparameters():
    a, b = np.zeros(3), np.zeros(2)
    opt = symopt.optimizer("notes.sgd", [{"params": [a], "lr": 0.1}, {"params": [b]}], lr=0.01)
    opt.step([np.ones(3), np.ones(2)])
    np.testing.assert_array_equal(a, -0.1 * np.ones(3))
    np.testing.assert_array_equal(b, -0.01 * np.ones(2))
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[1]["lr"] == 0.01
    assert opt.param_groups[1]["params"][0] is b


@pytest.mark.parametrize("dtype", DTYPES)
def test_state_dict_resume_is_exact(dtype, rng):
    p0 = _params(dtype, rng)
    grads = [_grads(p0, rng) for _ in range(20)]
    run_a = [p.copy() for p in p0]
    opt_a = symopt.optimizer("notes.adam_warmup", run_a, lr=0.01)
    for g in grads:
        opt_a.step(g)
    run_b = [p.copy() for p in p0]
    opt_b = symopt.optimizer("notes.adam_warmup", run_b, lr=0.01)
    for g in grads[:10]:
        opt_b.step(g)
    sd = opt_b.state_dict()
    sd_copy = copy.deepcopy(sd)
    resumed = [p.copy() for p in run_b]
    opt_c = symopt.optimizer("notes.adam_warmup", resumed, lr=0.01)
    opt_c.load_state_dict(sd)
    for g in grads[10:]:
        opt_c.step(g)
    for x, y in zip(run_a, resumed):
        np.testing.assert_array_equal(x, y)
    # loading did not mutate the dict; state_dict() is deterministic
    for k in sd["state"]:
        for key, val in sd["state"][k].items():
            np.testing.assert_array_equal(val, sd_copy["state"][k][key])
    assert opt_c.state_dict()["state"][0]["step"] == 20


def test_load_state_dict_restores_hyperparameters_and_checks_before_modifying(rng):
    params = _params(np.float64, rng)
    opt = symopt.optimizer("notes.adam", params, lr=0.01)
    opt.step(_grads(params, rng))
    sd = opt.state_dict()
    sd["param_groups"][0]["lr"] = 0.5
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.5
    before = {k: v.copy() for k, v in opt.state[0].items() if isinstance(v, np.ndarray)}
    bad = opt.state_dict()
    bad["state"][1]["v"] = np.zeros(7)          # wrong shape for param 1
    bad["param_groups"][0]["lr"] = 0.1
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad)
    assert opt.param_groups[0]["lr"] == 0.5
    for k, v in before.items():
        np.testing.assert_array_equal(opt.state[0][k], v)
    other = symopt.optimizer("notes.adagrad", [p.copy() for p in params])
    with pytest.raises(ValueError, match="rule"):
        opt.load_state_dict(other.state_dict())
    missing = opt.state_dict()
    del missing["state"][0]["m"]
    with pytest.raises(ValueError, match="missing key 'm'"):
        opt.load_state_dict(missing)


def test_user_rule_heavy_ball_runs_through_the_pipeline(rng):
    import sympy as sp

    p, g, m = sp.symbols("p g m")
    lr, beta = sp.symbols("lr beta")
    rule = symopt.Rule("heavy_ball", param=p, grad=g, state={m: 0},
                       hyper={lr: 1e-2, beta: 0.9},
                       updates=[(m, beta * m + g), (p, p - lr * m)])
    assert "m_{t}" in rule.latex() and rule._repr_latex_().startswith("$$")
    x = rng.standard_normal(7)
    ref, mom = x.copy(), np.zeros(7)
    opt = symopt.optimizer(rule, [x], lr=0.1)
    for _ in range(5):
        grad = rng.standard_normal(7)
        opt.step([grad])
        mom = 0.9 * mom + grad
        ref = ref - 0.1 * mom
    assert rel_err(x, ref) < 1e-13
    with pytest.raises(TypeError, match="unknown hyperparameter 'momentum'"):
        symopt.optimizer(rule, [x], momentum=0.5)


def test_scalars_the_kernel_finds_nonfinite_come_from_the_python_function(rng):
    """The kernel computes the per-step scalars (<rule>_scalar_rows); where one comes out NaN/inf it
    writes nothing and the step takes the Python scalar function's: its error (nothing modified), or
    its values."""
    import sympy as sp

    p, g = sp.symbols("p g")
    lr, beta = sp.symbols("lr beta")
    rule = symopt.Rule("debiased_sgd", param=p, grad=g, state={}, hyper={lr: 0.1, beta: 0.5},
                       updates=[(p, p - lr / (1 - beta**symopt.t) * g)])
    x = rng.standard_normal(5)
    x0 = x.copy()
    opt = symopt.optimizer(rule, [x], beta=1.0)         # 1 - beta**t = 0: Python divides by zero
    with pytest.raises(ZeroDivisionError):
        opt.step([np.ones(5)])
    assert np.array_equal(x, x0) and opt.step_counts.tolist() == [0]
    pair = [rng.standard_normal(4), rng.standard_normal(3)]
    pair0 = [a.copy() for a in pair]
    both = symopt.optimizer(rule, pair, beta=1.0)        # a None grad: the step of the tensors given
    with pytest.raises(ZeroDivisionError):
        both.step([np.ones(4), None])
    assert all(np.array_equal(a, b) for a, b in zip(pair, pair0)) and both.step_counts.tolist() == [0, 0]
    opt.param_groups[0]["beta"] = 0.5
    grad = rng.standard_normal(5)
    for t in (1, 2, 3):
        opt.step([grad])
        x0 = x0 - 0.1 / (1 - 0.5**t) * grad
    assert rel_err(x, x0) < 1e-15 and opt.step_counts.tolist() == [3]
    big = symopt.optimizer(rule, [np.ones(3)], lr=1e308, beta=0.5)   # lr / 0.5 overflows to inf in Python too
    big.step([np.ones(3)])
    assert big.params[0].tolist() == [-np.inf] * 3 and big.step_counts.tolist() == [1]


def test_step_counter_symbol_and_state_init_from_param(rng):
    import sympy as sp

    p, g, ema = sp.symbols("p g ema")
    lr, decay = sp.symbols("lr decay")
    # EMA of the parameter (starts as a copy of the param) and a 1/t step size.
    rule = symopt.Rule("sgd_inv_t_ema", param=p, grad=g, state={ema: symopt.State(p, key="ema")},
                       hyper={lr: 0.5, decay: 0.5},
                       updates=[(p, p - lr / symopt.t * g), (ema, decay * ema + (1 - decay) * p)])
    x = np.array([1.0, 2.0])
    opt = symopt.optimizer(rule, [x])
    np.testing.assert_array_equal(opt.state[0]["ema"], [1.0, 2.0])
    opt.step([np.array([1.0, 1.0])])   # t=1: x = x - 0.5*g
    opt.step([np.array([1.0, 1.0])])   # t=2: x = x - 0.25*g
    np.testing.assert_allclose(x, [0.25, 1.25], rtol=0, atol=1e-15)
    np.testing.assert_allclose(opt.state[0]["ema"], [0.5 * (0.5 * 1 + 0.5 * 0.5) + 0.5 * 0.25,
                                                     0.5 * (0.5 * 2 + 0.5 * 1.5) + 0.5 * 1.25], atol=1e-15)


@pytest.mark.parametrize("mode", ["raise", "skip", "ignore"])
def test_nonfinite_gradients(mode, rng):
    params = _params(np.float32, rng)
    opt = symopt.optimizer("notes.adam_warmup", params, on_nonfinite=mode)
    opt.step(_grads(params, rng))
    before_p = [p.copy() for p in params]
    before_s = copy.deepcopy(opt.state_dict())
    grads = _grads(params, rng)
    grads[1][3] = np.nan
    grads[0][0, 0] = np.inf
    if mode == "raise":
        with pytest.raises(NonFiniteGradientError, match="2 gradient value"):
            opt.step(grads)
    else:
        opt.step(grads)
    if mode in ("raise", "skip"):
        for p, b in zip(params, before_p):
            np.testing.assert_array_equal(p, b)
        after = opt.state_dict()
        assert after["state"][0]["step"] == 1
        np.testing.assert_array_equal(after["state"][0]["m"], before_s["state"][0]["m"])
        assert opt.skipped_steps == (1 if mode == "skip" else 0)
    else:
        assert np.isnan(params[1][3]) and opt.state_dict()["state"][1]["step"] == 2


def test_none_grad_skips_that_param_and_its_step_count(rng):
    params = _params(np.float64, rng)
    opt = symopt.optimizer("notes.adam_warmup", params, lr=0.1)
    keep = params[1].copy()
    opt.step([_grads(params, rng)[0], None])
    np.testing.assert_array_equal(params[1], keep)
    assert [opt.state[i]["step"] for i in range(2)] == [1, 0]
    # the second param's first update uses t=1 bias corrections: |update| = lr for a fresh Adam step
    g1 = np.full(params[1].shape, 3.0)
    before = params[1].copy()
    opt.step([_grads(params, rng)[0], g1])
    np.testing.assert_allclose(before - params[1], 0.1 * 3.0 / np.sqrt(9.0 + 1e-9), rtol=1e-12)
    assert [opt.state[i]["step"] for i in range(2)] == [2, 1]


BAD_CONSTRUCTION = [
    (lambda p: symopt.optimizer("nope", p), ValueError, "unknown rule 'nope'"),
    (lambda p: symopt.optimizer("notes.adam", p, lr=-1.0), ValueError, "'lr'"),
    (lambda p: symopt.optimizer("notes.adam", p, eps=-1e-3), ValueError, "'eps'"),
    (lambda p: symopt.optimizer("notes.adam", p, betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
    (lambda p: symopt.optimizer("notes.adam", p, betas=(-0.1, 0.9)), ValueError, r"betas\[0\]"),
    (lambda p: symopt.optimizer("notes.adam", p, betas=(0.9,)), ValueError, "tuple of 2"),
    (lambda p: symopt.optimizer("notes.adam", p, lr=float("nan")), ValueError, "finite"),
    (lambda p: symopt.optimizer("notes.adam", p, lr="0.1"), TypeError, "real number"),
    (lambda p: symopt.optimizer("notes.adam", p, momentum=0.9), TypeError, "unknown hyperparameter 'momentum'"),
    (lambda p: symopt.optimizer("notes.adam", p, on_nonfinite="maybe"), ValueError, "on_nonfinite"),
    (lambda p: symopt.optimizer("notes.adam", []), ValueError, "empty"),
    (lambda p: symopt.optimizer("notes.adam", p[0]), TypeError, "list of arrays"),
    (lambda p: symopt.optimizer("notes.adam", [p[0].astype(np.int64)]), TypeError, "float32 or float64"),
    (lambda p: symopt.optimizer("notes.adam", [p[0], p[1].astype(np.float32)]), TypeError, "one dtype"),
    (lambda p: symopt.optimizer("notes.adam", [p[0][:, ::2]]), ValueError, "C-contiguous"),
    (lambda p: symopt.optimizer("notes.adam", [p[0], p[0]]), ValueError, "share memory"),
    (lambda p: symopt.optimizer("notes.adam", [[1.0, 2.0]]), TypeError, "numpy.ndarray"),
    (lambda p: symopt.optimizer("notes.adam", [{"params": [p[0]], "lrr": 1}]), TypeError, "'lrr'"),
    (lambda p: symopt.optimizer("notes.adam", [{"lr": 1}]), ValueError, "no 'params'"),
]


@pytest.mark.parametrize("make,exc,match", BAD_CONSTRUCTION)
def test_bad_construction_raises_clearly(make, exc, match, rng):
    params = _params(np.float64, rng)
    with pytest.raises(exc, match=match):
        make(params)


def test_read_only_param_rejected(rng):
    p = rng.standard_normal(4)
    p.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        symopt.optimizer("notes.sgd", [p])


BAD_STEPS = [
    (lambda g: g[:1], ValueError, "1 entries"),
    (lambda g: g[0], TypeError, "list of arrays"),
    (lambda g: [g[0], g[1].astype(np.float32)], TypeError, "dtype float32"),
    (lambda g: [g[0], np.zeros(6)], ValueError, "shape"),
    (lambda g: [g[0], list(g[1])], TypeError, "numpy.ndarray"),
    (lambda g: [np.asfortranarray(np.zeros((6, 5)))[:, :], g[1]] if False else [g[0].T.copy().T, g[1]],
     ValueError, "C-contiguous"),
]


@pytest.mark.parametrize("make,exc,match", BAD_STEPS)
def test_bad_step_raises_before_modifying(make, exc, match, rng):
    params = _params(np.float64, rng)
    opt = symopt.optimizer("notes.adam", params)
    opt.step(_grads(params, rng))
    before = [p.copy() for p in params]
    sd = opt.state_dict()
    with pytest.raises(exc, match=match):
        opt.step(make(_grads(params, rng)))
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b)
    assert opt.state_dict()["state"][0]["step"] == sd["state"][0]["step"]


def test_invalid_value_set_at_runtime_raises_at_step(rng):
    params = _params(np.float64, rng)
    opt = symopt.optimizer("notes.adam", params)
    opt.param_groups[0]["lr"] = -0.1
    before = [p.copy() for p in params]
    with pytest.raises(ValueError, match="'lr'"):
        opt.step(_grads(params, rng))
    np.testing.assert_array_equal(params[0], before[0])


def test_rules_and_latex_api():
    names = symopt.rules()
    for n in ("notes.gd", "notes.sgd", "notes.adagrad", "notes.rmsprop", "notes.adam", "notes.adam_warmup"):
        assert n in names
    tex = symopt.rule("notes.adam").latex()
    assert r"\sqrt{\epsilon + v_{t}}" in tex and r"\theta_{t}" in tex
    assert repr(symopt.optimizer("notes.adam", [np.zeros(3)])).startswith("<symopt.Optimizer 'notes.adam'")


def test_runtime_does_not_import_sympy():
    code = ("import sys, numpy as np, symopt\n"
            "p=[np.zeros(10, np.float32)]\n"
            "o=symopt.optimizer('notes.adam_warmup', p)\n"
            "o.step([np.ones(10, np.float32)])\n"
            "assert 'sympy' not in sys.modules, 'sympy imported'\n"
            "assert 'jinja2' not in sys.modules, 'jinja2 imported'\n"
            "print(float(p[0][0]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert abs(float(out.stdout) + 1e-3) < 1e-9


def test_public_interface_for_checkpoints_and_adapters(rng):
    """What checkpoints, reductions and adapters read: the generated module, the formula hash,
    the state keys, read-only step counts, and a step with gradients given by address."""
    params = _params(np.float64, rng)
    twin = [p.copy() for p in params]
    opt = symopt.optimizer("adam", params, lr=0.01)
    ref = symopt.optimizer("adam", twin, lr=0.01)
    assert opt.module.FAMILY["name"] == "adam" and opt.module is symopt.runtime.kernels.load_builtin("adam")
    assert opt.state_keys == ("exp_avg", "exp_avg_sq")
    assert opt.formula_hash == opt.state_dict()["symopt"]["formula_hash"]
    grads = _grads(params, rng)
    opt.step_at([g.ctypes.data for g in grads])
    ref.step(grads)
    for p, r in zip(params, twin):
        np.testing.assert_array_equal(p, r)        # the same kernel on the same values: bit for bit
    before = params[1].copy()
    opt.step_at([grads[0].ctypes.data, None])    # None: that param is left as is, its count stays
    np.testing.assert_array_equal(params[1], before)
    assert opt.step_counts.tolist() == [2, 1]
    with pytest.raises(ValueError, match="read-only"):
        opt.step_counts[0] = 0
    with pytest.raises(ValueError, match="2 params"):
        opt.step_at([grads[0].ctypes.data])


def test_optimizer_accepts_a_loaded_generated_module(rng):
    params = _params(np.float32, rng)
    module = symopt.runtime.kernels.load_builtin("sgd")
    opt = symopt.Optimizer(module, params, lr=0.5)
    assert opt.rule_name == "sgd" and opt.module is module
