"""``symopt.kernel``: a rule's generated functions called directly, against ``symopt.optimizer``.

Table-driven over ``tests/rule_db.py``: for every rule, its defaults and each reference case
that selects another variant (50 variants), in float64 and float32, one tensor of 37
elements (vector loop and tail) takes ``STEPS`` steps with fixed random gradients three ways:

* ``symopt.optimizer`` (the flat-ABI kernel);
* ``k.step(param, grad, *state, k.scalars(t))`` called from Python;
* a user-written ``@numba.njit`` loop calling ``k.element`` on every element of its own
  arrays (rules with reductions: with the row of ``k.tensor_scalars``).

The three trajectories must be bit-identical (it is the same arithmetic in the same dtype):
params and every state buffer after every step, compared with ``np.array_equal``.

Cost: one user loop per state count (``SWEEPS``), written once and given the element
function as an argument; numba compiles it once per (rule variant, dtype).  All 50
variants run in float64; in float32, one variant per state count and every rule with
reductions (``F32_RULES``), the rest of the float32 kernels being the same template.

Bad input to ``k.step`` from Python: the optimizer's errors (dtype, shape, layout,
read-only, shared memory, wrong state count, wrong scalars, NaN/inf), nothing modified.
"""
import numba
import numpy as np
import pytest
from rule_db import ELEMENTWISE, RULE_DB

import symopt

STEPS = 5
N = 37


# ---------------------------------------------------------------- user-written element loops
@numba.njit(error_model="numpy")
def sweep0(element, p, g, sc):
    for i in range(p.size):
        (p[i],) = element(p[i], g[i], *sc)


@numba.njit(error_model="numpy")
def sweep1(element, p, g, a, sc):
    for i in range(p.size):
        p[i], a[i] = element(p[i], g[i], a[i], *sc)


@numba.njit(error_model="numpy")
def sweep2(element, p, g, a, b, sc):
    for i in range(p.size):
        p[i], a[i], b[i] = element(p[i], g[i], a[i], b[i], *sc)


@numba.njit(error_model="numpy")
def sweep3(element, p, g, a, b, c, sc):
    for i in range(p.size):
        p[i], a[i], b[i], c[i] = element(p[i], g[i], a[i], b[i], c[i], *sc)


@numba.njit(error_model="numpy")
def sweep4(element, p, g, a, b, c, d, sc):
    for i in range(p.size):
        p[i], a[i], b[i], c[i], d[i] = element(p[i], g[i], a[i], b[i], c[i], d[i], *sc)


SWEEPS = (sweep0, sweep1, sweep2, sweep3, sweep4)


def _variant_cases():
    """(rule name, keywords, variant name): the defaults, then each reference case of a new variant."""
    cases = []
    for info in (RULE_DB[name] for name in ELEMENTWISE):
        seen = set()
        for kw in ({},) + info.reference_cases:
            variant = symopt.kernel(info.name, "float64", **kw).variant
            if variant not in seen:
                seen.add(variant)
                cases.append((info.name, kw, variant))
    return cases


CASES = _variant_cases()


def _float32_subset():
    """One variant per state count and every variant with reductions."""
    chosen, counts = [], set()
    for name, kw, variant in CASES:
        k = symopt.kernel(name, "float32", **kw)
        if k.has_reduction or len(k.state_names) not in counts:
            counts.add(len(k.state_names))
            chosen.append((name, kw, variant))
    return chosen


F32_CASES = _float32_subset()
PARAMS = ([pytest.param(np.float64, *c, id=f"{c[2]}-f64") for c in CASES]
          + [pytest.param(np.float32, *c, id=f"{c[2]}-f32") for c in F32_CASES])


def _data(dtype, seed=0):
    rng = np.random.default_rng(seed)
    p = (rng.uniform(0.5, 2.0, N) * rng.choice([-1.0, 1.0], N)).astype(dtype)
    grads = [(rng.normal(size=N) * 10.0 ** rng.uniform(-2, 0, N)).astype(dtype) for _ in range(STEPS)]
    return p, grads


@pytest.mark.parametrize("dtype, name, kw, variant", PARAMS)
def test_step_and_element_match_optimizer(dtype, name, kw, variant):
    k = symopt.kernel(name, dtype, **kw)
    assert k.variant == variant and k.dtype == dtype
    p0, grads = _data(dtype)
    p_opt, p_step, p_elem = p0.copy(), p0.copy(), p0.copy()
    opt = symopt.optimizer(name, [p_opt], **kw)
    assert opt.variant == variant and opt.state_keys == k.state_names
    s_step, s_elem = k.init_state(p_step), k.init_state(p_elem)
    for key, arr in zip(k.state_names, s_step):
        assert arr.dtype == dtype and np.array_equal(arr, opt.state[0][key]), key
    sweep = SWEEPS[len(k.state_names)]
    for t, g in enumerate(grads, start=1):
        opt.step([g])
        sc = k.scalars(t)
        assert len(sc) == k.nscalars and all(type(x) is float for x in sc)
        assert k.step(p_step, g, *s_step, sc) == 0
        if k.has_reduction:
            row = k.tensor_scalars(p_elem, g, *s_elem, sc)
            assert row.shape == (k.nscalars + k.ntensor_scalars,)
            sc = tuple(row)
        sweep(k.element, p_elem, g, *s_elem, sc)
        for label, p, states in (("step", p_step, s_step), ("element", p_elem, s_elem)):
            assert np.array_equal(p, p_opt), f"{label}: param differs at step {t}"
            for key, arr in zip(k.state_names, states):
                assert np.array_equal(arr, opt.state[0][key]), f"{label}: state {key!r} differs at step {t}"


@pytest.mark.parametrize("name, kw", [("adam", {"lr": 0.01}), ("lamb", {})])
def test_step_any_shape_parallel_and_njit_caller(name, kw):
    """A 2-D param of 70 000 elements: k.step and k.step_parallel from Python and a user
    @numba.njit function calling k.step (the generated one-tensor step) agree with the
    optimizer bit for bit (serial and threaded; the njit caller's reduction pass sums one chunk,
    as the serial optimizer)."""
    k = symopt.kernel(name, "float64", **kw)
    rng = np.random.default_rng(1)
    p0 = rng.normal(size=(350, 200))
    g = rng.normal(size=p0.shape)
    p_ser, p_par, p_jit = p0.copy(), p0.copy(), p0.copy()
    runs = {}
    for threshold in (1 << 62, 1):   # serial, threaded
        runs[threshold] = p = p0.copy()
        opt = symopt.optimizer(name, [p], **kw)
        opt.parallel_threshold = threshold
        for t in (1, 2, 3):
            opt.step([g])
    s_ser, s_par, s_jit = k.init_state(p0), k.init_state(p0), k.init_state(p0)
    step = k.step

    @numba.njit
    def user_step(p, grad, states, sc):
        return step(p, grad, *states, sc, True)

    for t in (1, 2, 3):
        sc = k.scalars(t)
        k.step(p_ser, g, *s_ser, sc)
        k.step_parallel(p_par, g, *s_par, sc)
        assert user_step(p_jit, g, s_jit, sc) == 0
    assert np.array_equal(p_ser, runs[1 << 62]) and np.array_equal(p_jit, runs[1 << 62])
    assert np.array_equal(p_par, runs[1])
    for a, b in zip(s_ser, s_jit):
        assert np.array_equal(a, b)


def test_njit_caller_counts_nonfinite_and_writes_nothing():
    k = symopt.kernel("adam", "float32")
    step = k.step

    @numba.njit
    def user_step(p, g, m, v, sc):
        return step(p, g, m, v, sc, True)

    p = np.ones(8, np.float32)
    g = np.full(8, 0.5, np.float32)
    g[[2, 5]] = [np.nan, -np.inf]
    m, v = k.init_state(p)
    assert user_step(p, g, m, v, k.scalars(1)) == 2
    assert np.all(p == 1) and not m.any() and not v.any()

    @numba.njit
    def call(f, p, g, m, v, sc):     # k.step passed as an argument
        return f(p, g, m, v, sc, True)

    assert call(k.step, p, g, m, v, k.scalars(1)) == 2
    g[[2, 5]] = 0.5
    assert call(k.step, p, g, m, v, k.scalars(1)) == 0
    p_ref = np.ones(8, np.float32)
    symopt.optimizer("adam", [p_ref]).step([g])
    assert np.array_equal(p, p_ref)


def test_options_scalars_and_init_state():
    k = symopt.kernel("sgd", "float64", momentum=0.9, lr=0.1)
    assert k.variant == "sgd.momentum" and k.state_names == ("momentum_buffer",)
    assert k.scalars(1, lr=0.5) != k.scalars(1)
    with pytest.raises(ValueError, match="selects variant 'sgd'"):
        k.scalars(1, momentum=0.0)
    with pytest.raises(TypeError, match="unknown hyperparameter 'betas'"):
        k.scalars(1, betas=(0.9, 0.99))
    with pytest.raises(ValueError, match="must be finite"):
        k.scalars(1, lr=float("nan"))
    with pytest.raises(ValueError, match="integer >= 1"):
        k.scalars(0)
    with pytest.raises(TypeError, match="unknown hyperparameter 'amsgrad'"):
        symopt.kernel("sgd", amsgrad=True)
    with pytest.raises(TypeError, match="float32 or float64"):
        symopt.kernel("adam", "float16")
    with pytest.raises(ValueError, match="unknown rule"):
        symopt.kernel("no_such_rule")
    with pytest.raises(TypeError, match="muon is a matrix rule"):
        symopt.kernel("muon")
    (buf,) = k.init_state(np.ones((2, 3)))
    assert buf.shape == (2, 3) and buf.dtype == np.float64 and not buf.any()
    # a state that starts as the param is a copy of it
    sf = symopt.kernel("sgd_schedulefree", "float32")
    p = np.arange(4, dtype=np.float32)
    start = dict(zip(sf.state_names, sf.init_state(p)))
    opt = symopt.optimizer("sgd_schedulefree", [p.copy()])
    for key, arr in start.items():
        assert np.array_equal(arr, opt.state[0][key]) and not np.shares_memory(arr, p), key


def test_user_rule_and_element_docstring():
    """A composed user Rule goes through the same generated module kind, with documented functions."""
    rule = symopt.compose("sgd", symopt.transforms.clip_by_value(1.0))
    k = symopt.kernel(rule, "float64", lr=0.1)
    p_opt, p_k = np.linspace(-1, 1, 9), np.linspace(-1, 1, 9)
    opt = symopt.optimizer(rule, [p_opt], lr=0.1)
    state = k.init_state(p_k)
    for t in (1, 2, 3):
        g = np.sin(np.arange(9.0) * t) * 3
        opt.step([g])
        k.step(p_k, g, *state, k.scalars(t))
    assert np.array_equal(p_k, p_opt)
    doc = k.element.__doc__
    assert "The rule's updates, in order" in doc and "<-" in doc and "s0" in doc
    assert k.step.__doc__ == k.step.njit.__doc__ and "NaN/inf" in k.step.__doc__


# ------------------------------------------------------------------------------ bad input
def _adam32():
    k = symopt.kernel("adam", "float32")
    p = np.linspace(-1, 1, 6, dtype=np.float32)
    g = np.full(6, 0.25, np.float32)
    return k, p, g, list(k.init_state(p))


def _bad_cases():
    def nan_grad(k, p, g, s):
        g = g.copy()
        g[3] = np.nan
        return (p, g, *s, k.scalars(1)), {}

    def inf_grad(k, p, g, s):
        g = g.copy()
        g[0] = np.inf
        return (p, g, *s, k.scalars(1)), {}

    def readonly(k, p, g, s):
        p.flags.writeable = False
        return (p, g, *s, k.scalars(1)), {}

    def readonly_state(k, p, g, s):
        s[1].flags.writeable = False
        return (p, g, *s, k.scalars(1)), {}

    return [
        ("float64 grad", lambda k, p, g, s: ((p, g.astype(np.float64), *s, k.scalars(1)), {}), TypeError,
         "grad has dtype float64; this kernel runs float32"),
        ("float64 state", lambda k, p, g, s: ((p, g, s[0].astype(np.float64), s[1], k.scalars(1)), {}), TypeError,
         "exp_avg has dtype float64"),
        ("list grad", lambda k, p, g, s: ((p, list(g), *s, k.scalars(1)), {}), TypeError, "must be a numpy.ndarray"),
        ("grad shape", lambda k, p, g, s: ((p, g[:5].copy(), *s, k.scalars(1)), {}), ValueError,
         r"grad has shape \(5,\), param has \(6,\)"),
        ("state shape", lambda k, p, g, s: ((p, g, s[0].reshape(2, 3), s[1], k.scalars(1)), {}), ValueError,
         "exp_avg has shape"),
        ("strided param", lambda k, p, g, s: ((np.zeros(12, np.float32)[::2], g, *s, k.scalars(1)), {}), ValueError,
         "param is not C-contiguous"),
        ("read-only param", readonly, ValueError, "param is read-only"),
        ("read-only state", readonly_state, ValueError, "exp_avg_sq is read-only"),
        ("state aliases param", lambda k, p, g, s: ((p, g, p, s[1], k.scalars(1)), {}), ValueError,
         "param and exp_avg share memory"),
        ("state aliases state", lambda k, p, g, s: ((p, g, s[0], s[0], k.scalars(1)), {}), ValueError,
         "exp_avg and exp_avg_sq share memory"),
        ("grad aliases state", lambda k, p, g, s: ((p, s[0], *s, k.scalars(1)), {}), ValueError,
         "exp_avg and grad share memory"),
        ("missing state", lambda k, p, g, s: ((p, g, s[0], k.scalars(1)), {}), TypeError,
         r"takes \(param, grad, exp_avg, exp_avg_sq, scalars, check\)"),
        ("short scalars", lambda k, p, g, s: ((p, g, *s, k.scalars(1)[:-1]), {}), TypeError,
         "scalars must be the tuple of 10"),
        ("string scalar", lambda k, p, g, s: ((p, g, *s, ("x",) * 10), {}), TypeError, "must be real numbers"),
        ("check not bool", lambda k, p, g, s: ((p, g, *s, k.scalars(1), "yes"), {}), TypeError,
         "check must be True or False"),
        ("NaN grad", nan_grad, symopt.NonFiniteGradientError, "1 gradient value"),
        ("inf grad", inf_grad, symopt.NonFiniteGradientError, "1 gradient value"),
    ]


@pytest.mark.parametrize("label, make, exc, match", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_step_bad_input_raises_and_modifies_nothing(label, make, exc, match):
    k, p, g, s = _adam32()
    args, kwargs = make(k, p, g, s)
    before = [a.copy() for a in args if isinstance(a, np.ndarray)]
    with pytest.raises(exc, match=match):
        k.step(*args, **kwargs)
    after = [a for a in args if isinstance(a, np.ndarray)]
    for b, a in zip(before, after):
        assert b.tobytes() == a.tobytes()


def test_nonfinite_unchecked_and_parallel():
    k, p, g, s = _adam32()
    g[1] = np.nan
    with pytest.raises(symopt.NonFiniteGradientError):
        k.step_parallel(p, g, *s, k.scalars(1))
    assert k.step(p, g, *s, k.scalars(1), check=False) == 0   # as on_nonfinite="ignore": NaN goes through
    assert np.isnan(p[1]) and np.isfinite(np.delete(p, 1)).all()
    with pytest.raises(TypeError, match="check given twice"):
        k.step(p, g, *s, k.scalars(1), True, check=True)


def test_numba_loop_example_trains_and_matches_the_optimizer():
    """examples/numba_loop.py: the fused njit loop lowers the loss and ends bit-identical to the
    per-step optimizer loop (main() raises SystemExit otherwise)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "numba_loop.py"
    spec = importlib.util.spec_from_file_location("symopt_example_numba_loop", path)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    X, y, w0 = ex.make_problem()
    start = ex.loss_and_grad(w0.copy(), X, y, np.empty_like(w0))
    assert ex.main(300) < 0.2 * start
