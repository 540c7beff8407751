"""Factored rules (row/column statistics, ``symopt.rulebook.factored``): ``adafactor`` against
``torch.optim.Adafactor`` 2.13 beyond the torch table of ``tests/rule_db.py`` (which runs a
(5, 3) and a (4,) tensor): stacks of matrices, 1-row/1-column matrices and 0-d params, the torch
adapter, both checkpoint formats, 50-digit verification and a user-written factored rule.

Tolerances (``conftest.rel_err``, per tensor after every step): float64 1e-9 elementwise; float32
1e-5 max-norm (symopt sums the norms and row/column means in float64, torch in float32).

``adafactor_optax`` against ``optax.adafactor`` (factored=True): float64 1e-9 elementwise against
Optax's chain with its decay computed in float64 (measured 5e-16; Optax's own float32 decay
moves float64 trajectories by ~2e-8), float32 2e-6 max-norm against ``optax.adafactor`` itself.
"""
import numpy as np
import pytest
import sympy as sp
from conftest import CountedCalls, rel_err

import symopt
from symopt.rulebook.factored import ColMean, RowMean
from symopt.rulebook.metadata import RuleError

torch = pytest.importorskip("torch")

SHAPES = [(4, 6), (2, 3, 5), (1, 7), (7, 1), (5,), ()]
TOL = {np.float64: (1e-9, 0.0), np.float32: (1e-5, 1.0)}   # (tolerance, rel_err floor)
STEPS = 12


def _data(dtype, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    params = [np.asarray(rng.uniform(0.5, 2.0, s) * rng.choice([-1.0, 1.0], s)).astype(dtype) for s in shapes]
    grads = [[np.asarray(rng.normal(size=s) * 10.0 ** rng.uniform(-2, 0, s)).astype(dtype) for s in shapes]
             for _ in range(STEPS)]
    return params, grads


def _torch_run(params, grads, steps, **kw):
    tp = [torch.tensor(p.copy()) for p in params]
    opt = torch.optim.Adafactor(tp, foreach=False, **kw)
    for k in range(steps):
        for t, g in zip(tp, grads[k]):
            t.grad = torch.from_numpy(g.copy())
        opt.step()
    return tp, opt


def test_latex_reads_as_the_paper():
    text = symopt.rule("adafactor").latex()
    assert r"\operatorname{mean}_{j}\left(g_{t}^{2}\right)" in text      # row means of g²
    assert r"\operatorname{mean}_{i}\left(g_{t}^{2}\right)" in text      # column means
    assert r"\operatorname{mean}_{i}\left(R_{t}\right)" in text          # v̂ = R C / mean_i R
    assert r"\epsilon_{mach}" in text


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kw", [{}, dict(lr=0.05, weight_decay=0.1, maximize=True, eps=(1e-6, 1e-2), d=1.5)],
                         ids=["defaults", "options"])
def test_numpy_path_matches_torch_on_every_shape(dtype, kw):
    params, grads = _data(dtype)
    ours = [p.copy() for p in params]
    opt = symopt.optimizer("adafactor", ours, **kw)
    tp = [torch.tensor(p.copy()) for p in params]
    topt = torch.optim.Adafactor(tp, foreach=False, **kw)
    tol, floor = TOL[dtype]
    for k in range(STEPS):
        opt.step(grads[k])
        for t, g in zip(tp, grads[k]):
            t.grad = torch.from_numpy(g.copy())
        topt.step()
        for a, t in zip(ours, tp):
            assert rel_err(a, t.numpy(), floor=floor) <= tol
    for j, t in enumerate(tp):
        theirs = topt.state[t]
        assert set(opt.state[j]) == set(theirs), (SHAPES[j], sorted(opt.state[j]), sorted(theirs))
        for key, v in theirs.items():
            if key != "step":
                assert opt.state[j][key].shape == tuple(v.shape)
                assert rel_err(opt.state[j][key], v.numpy(), floor=floor) <= tol, key


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_torch_adapter_and_torch_format_checkpoint_both_ways(dtype, backend):
    """symopt.torch.Optimizer (the Numba kernels or the generated torch module) steps as
    torch.optim.Adafactor on every shape; each loads the other's state_dict mid-run."""
    params, grads = _data(np.float64 if dtype == torch.float64 else np.float32, seed=1)
    tol, floor = TOL[np.float64 if dtype == torch.float64 else np.float32]
    a = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    b = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    ours = symopt.torch.Optimizer("adafactor", a, lr=0.03, weight_decay=0.01, backend=backend)
    theirs = torch.optim.Adafactor(b, lr=0.03, weight_decay=0.01, foreach=False)

    def run(opts, tensors, steps):
        for k in steps:
            for ts in tensors:
                for t, g in zip(ts, grads[k]):
                    t.grad = torch.from_numpy(g.copy())
            for o in opts:
                o.step()

    run([ours, theirs], [a, b], range(4))
    sd = ours.state_dict()
    assert {k: tuple(v.shape) for k, v in sd["state"][1].items()} == {"step": (), "row_var": (2, 3, 1),
                                                                      "col_var": (2, 1, 5)}
    # torch resumes from symopt's checkpoint, symopt from torch's
    c = [t.detach().clone().requires_grad_() for t in a]
    d = [t.detach().clone().requires_grad_() for t in b]
    torch_from_ours = torch.optim.Adafactor(c, foreach=False)
    torch_from_ours.load_state_dict(sd)
    ours_from_torch = symopt.torch.Optimizer("adafactor", d, backend=backend)
    ours_from_torch.load_state_dict(theirs.state_dict())
    run([ours, theirs, torch_from_ours, ours_from_torch], [a, b, c, d], range(4, STEPS))
    for ts in (a, c, d):
        for x, y in zip(ts, b):
            assert rel_err(x.detach().numpy(), y.detach().numpy(), floor=floor) <= tol


def test_npz_checkpoint_resumes_exactly(tmp_path):
    params, grads = _data(np.float64, seed=2)
    opt = symopt.optimizer("adafactor", params, lr=0.05)
    for k in range(3):
        opt.step(grads[k])
    opt.save(tmp_path / "ada.npz")
    copies = [p.copy() for p in params]
    resumed = symopt.load(tmp_path / "ada.npz", copies)
    assert {k: v.shape for k, v in resumed.state[1].items() if k != "step"} == {"row_var": (2, 3, 1),
                                                                                 "col_var": (2, 1, 5)}
    assert set(resumed.state[4]) == {"step", "variance"} and resumed.state[5]["variance"].shape == ()
    for k in range(3, 6):
        opt.step(grads[k])
        resumed.step([g.copy() for g in grads[k]])
    for x, y in zip(params, copies):
        np.testing.assert_array_equal(x, y)


def test_bad_state_is_refused_and_changes_nothing():
    params, grads = _data(np.float64, seed=3, shapes=[(4, 6), (5,)])
    opt = symopt.optimizer("adafactor", params)
    opt.step(grads[0])
    sd = opt.state_dict()
    before = opt.state_dict()
    sd["state"][0]["row_var"] = np.zeros((4, 6))
    with pytest.raises(ValueError, match=r"state 'row_var' of param 0 has shape \(4, 6\), expected \(4, 1\), the param has \(4, 6\)"):
        opt.load_state_dict(sd)
    sd = opt.state_dict()
    sd["state"][1]["row_var"] = np.zeros((5, 1))
    with pytest.raises(ValueError, match="has 'row_var', which rule 'adafactor' does not keep for a param of shape"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    for j in (0, 1):
        for key, v in before["state"][j].items():
            np.testing.assert_array_equal(after["state"][j][key], v)
    with pytest.raises(TypeError, match=r"'eps\[0\]' must be a real number, got str"):
        symopt.optimizer("adafactor", params, eps=("x", 1e-3))
    with pytest.raises(ValueError, match=r"invalid 'eps\[0\]' = -1e-06: must be >= 0.0"):
        symopt.optimizer("adafactor", params, eps=(-1e-6, 1e-3))
    with pytest.raises(ValueError, match="invalid 'd' = 0.5: must be >= 1.0"):
        symopt.optimizer("adafactor", params, d=0.5)


def test_torch_adapter_refuses_what_it_cannot_step():
    w = torch.zeros(6, 4, dtype=torch.float64).t().requires_grad_()   # a transposed (not C-contiguous) matrix
    with pytest.raises(ValueError, match="not C-contiguous; a factored rule's Numba kernels read the last two axes"):
        symopt.torch.Optimizer("adafactor", [w])
    # the torch backend reads any strided layout: the transposed matrix is the 4 × 6 matrix it shows
    v = w.detach().contiguous().requires_grad_()
    opt_w, opt_v = (symopt.torch.Optimizer("adafactor", [x], backend="torch", lr=0.05) for x in (w, v))
    for _ in range(3):
        w.grad = torch.linspace(-1, 1, 24, dtype=torch.float64).reshape(4, 6)
        v.grad = w.grad.clone()
        opt_w.step()
        opt_v.step()
    assert torch.equal(w, v) and opt_w.state[w]["row_var"].shape == (4, 1)


def test_dimension_numbers_are_refused():
    """dimension_numbers (Muon's matrix layout) does not apply: a factored rule reads (…, m, n) as m × n matrices."""
    p = np.zeros((4, 3, 2))
    with pytest.raises(ValueError, match="dimension_numbers is for Newton–Schulz rules"):
        symopt.optimizer("adafactor", [{"params": [p], "dimension_numbers": (0, (1, 2))}])
    opt = symopt.optimizer("adafactor", [p])
    sd = opt.state_dict()
    sd["param_groups"][0]["dimension_numbers"] = (0, (1, 2))
    with pytest.raises(ValueError, match="dimension_numbers is for Newton–Schulz rules"):
        opt.load_state_dict(sd)
    assert "dimension_numbers" not in opt.param_groups[0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_verify_against_mpmath(dtype):
    from symopt.verify.check import verify

    (result,) = verify(["adafactor"], dtypes=(dtype,), steps=2)
    assert result.ok, (result.max_error, result.worst)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("min_dim", [2, 128], ids=["factored", "full_v"])
def test_optax_rule_verifies_against_mpmath_in_both_layouts(dtype, min_dim):
    from symopt.rulebook.catalog import family
    from symopt.verify.check import verify_factored_variant

    fam = family("adafactor_optax")
    result = verify_factored_variant(fam, fam.variants[0][1], dtype, steps=2,
                                     hyper={"min_dim_size_to_factor": min_dim})
    assert result.ok, (result.max_error, result.worst)
    if min_dim == 2 and dtype == "float64":   # the momentum variant (state ema), factored over every axis pair
        result = verify_factored_variant(fam, fam.variants[1][1], dtype, steps=2,
                                         hyper={"min_dim_size_to_factor": min_dim, "momentum": 0.9})
        assert result.ok, (result.max_error, result.worst)


def factored_rmsprop():
    """A user's factored RMSprop: v̂ = R C / mean_i R, θ ← θ − γ g / (√v̂ + ε)."""
    w, g, R, C, V, vhat = sp.symbols("w g R C V vhat")
    lr, beta, eps = sp.symbols("lr beta eps")
    from symopt.rulebook.factored import factored

    return symopt.Rule(
        "factored_rmsprop", param=w, grad=g,
        state={R: symopt.State(0, shape="row"), C: symopt.State(0, shape="col"), V: symopt.State(0, shape="vector")},
        hyper={lr: 0.01, beta: 0.9, eps: 1e-8},
        updates=[(R, beta * R + (1 - beta) * RowMean(g**2)), (C, beta * C + (1 - beta) * ColMean(g**2)),
                 (V, beta * V + (1 - beta) * g**2),
                 (vhat, sp.Piecewise((R * C / ColMean(R), factored), (V, True))),
                 (w, w - lr * g / (sp.sqrt(vhat) + eps))])


def test_user_factored_rule_runs_and_matches_numpy():
    params, grads = _data(np.float64, seed=4, shapes=[(3, 4), (2, 2, 3), (6,)])
    ours = [p.copy() for p in params]
    opt = symopt.optimizer(factored_rmsprop(), ours, lr=0.02, beta=0.8)
    ref = [p.copy() for p in params]
    rows = [np.zeros(p.shape[:-1] + (1,)) for p in params[:2]]
    cols = [np.zeros(p.shape[:-2] + (1, p.shape[-1])) for p in params[:2]]
    v = np.zeros(6)
    for k in range(STEPS):
        opt.step(grads[k])
        for j in range(2):
            g = grads[k][j]
            rows[j] = 0.8 * rows[j] + 0.2 * (g * g).mean(axis=-1, keepdims=True)
            cols[j] = 0.8 * cols[j] + 0.2 * (g * g).mean(axis=-2, keepdims=True)
            vhat = rows[j] * cols[j] / rows[j].mean(axis=-2, keepdims=True)
            ref[j] -= 0.02 * g / (np.sqrt(vhat) + 1e-8)
        v = 0.8 * v + 0.2 * grads[k][2] ** 2
        ref[2] -= 0.02 * grads[k][2] / (np.sqrt(v) + 1e-8)
    for a, b in zip(ours, ref):
        assert rel_err(a, b) <= 1e-12
    assert sorted(opt.state[0]) == ["C", "R", "step"] and sorted(opt.state[2]) == ["V", "step"]


def test_user_factored_rule_through_the_torch_backend():
    """A user's factored rule gets its torch module from the user cache (the same factored plan), equal to
    its Numba kernels (float64, every layout)."""
    params, grads = _data(np.float64, seed=8, shapes=[(3, 4), (2, 2, 3), (6,), ()])
    ref = [p.copy() for p in params]
    numba_opt = symopt.optimizer(factored_rmsprop(), ref, lr=0.02)
    ts = [torch.tensor(p.copy()) for p in params]
    opt = symopt.torch.Optimizer(factored_rmsprop(), ts, backend="torch", lr=0.02)
    for k in range(5):
        numba_opt.step(grads[k])
        for t, g in zip(ts, grads[k]):
            t.grad = torch.from_numpy(g.copy())
        opt.step()
    for t, r in zip(ts, ref):
        assert rel_err(t.numpy(), r) <= 1e-12
    assert sorted(opt.state[ts[1]]) == ["C", "R", "step"] and sorted(opt.state[ts[2]]) == ["V", "step"]


def test_factored_rule_errors_name_the_problem():
    w, g, R = sp.symbols("w g R")
    with pytest.raises(RuleError, match="a row/column state may be read only after its update"):
        symopt.optimizer(symopt.Rule("bad", param=w, grad=g, state={R: symopt.State(0, shape="row")},
                                     hyper={}, updates=[(w, w - R * g), (R, RowMean(g**2))]), [np.zeros((2, 3))])
    with pytest.raises(RuleError, match="State.shape must be"):
        symopt.State(0, shape="diagonal")


# -- adafactor_optax: optax.adafactor (factored=True) ------------------------------------------------------
#: Shapes against Optax with min_dim_size_to_factor=3: factored with rows ≤ / > columns (Optax's rows lie
#: along the second largest axis: the first of a tall matrix), a stack, params whose two largest axes are
#: not the last two (a (5, 2, 6) stack over axes 0 and 2; a 4-D kernel over axes 3 and 1), 1-row and
#: too-small matrices (a full v), a vector and a scalar.
OX_SHAPES = [(4, 6), (6, 4), (2, 3, 5), (5, 2, 6), (3, 7, 2, 5), (3, 3), (1, 7), (2, 2), (5,), ()]


@pytest.fixture(scope="module")
def ox():
    optax = pytest.importorskip("optax")
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    return optax, jnp


def _ox_run(tx, jnp, params, grads):
    """The params of a GradientTransformation after every step (numpy arrays; its update jitted, as users run it)."""
    import jax

    ps = [jnp.asarray(p) for p in params]
    state = tx.init(ps)
    update = jax.jit(tx.update)
    out = []
    for gs in grads:
        updates, state = update([jnp.asarray(g) for g in gs], state, ps)
        ps = [p + u for p, u in zip(ps, updates)]
        out.append([np.asarray(p) for p in ps])
    return out, state


#: Stacks of matrices, the threaded kernel's case: (6, 32, 48) is 6 matrices; the conv-like
#: (8, 4, 3, 3) 32 matrices of 3 × 3 for adafactor, 9 strided ones over axes (1, 0) for Optax's
#: factoring; with a 2-D and a 1-D param that stay serial.
THREADED_SHAPES = [(6, 32, 48), (8, 4, 3, 3), (5, 7), (11,)]


@pytest.mark.skipif(symopt.runtime.threads.max_threads() < 2,
                    reason="the threaded factored kernel needs 2 numba threads (NUMBA_NUM_THREADS >= 2)")
@pytest.mark.parametrize("rule, kw", [("adafactor", {}), ("adafactor_optax", {"min_dim_size_to_factor": 3})],
                         ids=["torch", "optax"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_threaded_factored_step_does_not_depend_on_the_thread_count(rule, kw, dtype):
    """The threaded twin of the factored kernel (the matrices of a stack over the threads, the tensor
    sums' per-matrix partials added in matrix order after each pass) writes the same bits on 1 and on 2
    threads: params and every state, step after step; a grad with a NaN is refused alike.  Against the
    serial kernel (the same sums in the same order; LLVM may reassociate an element's products
    otherwise in the two): float64 1e-14, float32 1e-6 elementwise (measured: identical, but for
    adafactor_optax float64, 1 ulp in 101 of 9216 elements)."""
    params, grads = _data(dtype, seed=3, shapes=THREADED_SHAPES)
    runs = []
    try:
        for threshold, nthreads in ((1 << 62, 2), (0, 1), (0, 2)):
            symopt.set_num_threads(nthreads)
            ours = [p.copy() for p in params]
            opt = symopt.optimizer(rule, ours, **kw)
            opt.parallel_threshold = threshold
            step = opt._matrix
            step.calls = [(fn, twin and CountedCalls(twin), *rest) for fn, twin, *rest in step.calls]
            for k in range(4):
                if k == 2:
                    bad = [g.copy() for g in grads[k]]
                    bad[1].flat[7] = np.nan
                    with pytest.raises(symopt.NonFiniteGradientError):
                        opt.step(bad)
                opt.step(grads[k])
            runs.append((ours, opt.state_dict()["state"], [c[1] for c in step.calls]))
    finally:
        symopt.set_num_threads(symopt.runtime.threads.max_threads())
    (serial, s_state, s_twins), (one, o_state, o_twins), (two, t_state, t_twins) = runs
    assert [t is not None for t in t_twins] == [True, True, False, False]   # stacks of 2+ matrices only
    assert [[t.calls for t in twins if t] for twins in (s_twins, o_twins, t_twins)] == [[0, 0], [4, 4], [4, 4]]
    tol = 1e-14 if dtype == np.float64 else 1e-6
    for j in range(len(params)):
        assert one[j].tobytes() == two[j].tobytes()
        assert rel_err(serial[j], two[j]) <= tol
        assert s_state[j].keys() == t_state[j].keys() == o_state[j].keys()
        for key, v in t_state[j].items():
            assert np.asarray(o_state[j][key]).tobytes() == np.asarray(v).tobytes(), (j, key)
            if isinstance(v, np.ndarray):
                assert rel_err(s_state[j][key], v) <= tol, (j, key)


@pytest.mark.parametrize("kw", [dict(min_dim_size_to_factor=3, lr=0.05),
                                dict(min_dim_size_to_factor=3, lr=0.05, clipping_threshold=None, decay_rate=0.6,
                                     eps=1e-6, multiply_by_parameter_scale=False, weight_decay_rate=0.01),
                                dict(lr=0.05, clipping_threshold=0.5, decay_offset=0.0)],
                         ids=["factored", "options", "min_dim_128"])
def test_optax_adafactor_float64_on_every_shape(kw, ox):
    """≤ 1e-9 elementwise after every step against Optax's chain with its decay 1 − t^-c in float64."""
    from rule_db import _adafactor_optax_f64

    optax, jnp = ox
    params, grads = _data(np.float64, seed=5, shapes=OX_SHAPES)
    ours = [p.copy() for p in params]
    opt = symopt.optimizer("adafactor_optax", ours, **kw)
    min_dim = kw.get("min_dim_size_to_factor", 128)
    assert opt.factored_layouts == tuple("matrix" if len(s) >= 2 and sorted(s)[-2] >= min_dim else "vector"
                                         for s in OX_SHAPES)
    rest = {k: v for k, v in kw.items() if k not in ("lr", "min_dim_size_to_factor")}
    theirs, state = _ox_run(_adafactor_optax_f64(optax, jnp, kw["lr"], min_dim, **rest), jnp, params, grads)
    for k in range(STEPS):
        opt.step(grads[k])
        for a, b in zip(ours, theirs[k]):
            assert rel_err(a, b) <= 1e-9
    _assert_optax_state(opt, state[0], OX_SHAPES, 1e-9)


def _assert_optax_state(opt, fs, shapes, tol, floor=0.0):
    """symopt's v of unfactored params and row/column means (the reduced axis kept as 1) equal Optax's."""
    for j, s in enumerate(shapes):
        if opt.factored_layouts[j] == "vector":
            assert rel_err(opt.state[j]["v"], np.asarray(fs.v[j]), floor=floor) <= tol
        else:
            rows, cols = opt.factored_axes[j]
            assert opt.factored_axes[j] == tuple(int(a) for a in np.argsort(s)[-2:])   # Optax's _factored_dims
            assert rel_err(opt.state[j]["v_row"].squeeze(cols), np.asarray(fs.v_row[j]), floor=floor) <= tol
            assert rel_err(opt.state[j]["v_col"].squeeze(rows), np.asarray(fs.v_col[j]), floor=floor) <= tol


def test_optax_adafactor_momentum_float64_numba_and_jax(ox):
    """momentum (Optax's ema of the scaled update, debias=False, before the weight decay), every shape:
    the Numba kernels and the generated JAX module (symopt.jax.transform) ≤ 1e-9 elementwise after every
    step against Optax's chain (decay and ema in float64); the states v_row, v_col, v and ema too."""
    import symopt.jax
    from rule_db import _adafactor_optax_f64

    optax, jnp = ox
    kw = dict(min_dim_size_to_factor=3, momentum=0.9, weight_decay_rate=0.01)
    params, grads = _data(np.float64, seed=9, shapes=OX_SHAPES)
    ours = [p.copy() for p in params]
    opt = symopt.optimizer("adafactor_optax", ours, lr=0.05, **kw)
    theirs, state = _ox_run(_adafactor_optax_f64(optax, jnp, 0.05, 3, momentum=0.9, weight_decay_rate=0.01),
                            jnp, params, grads)
    via_jax, _ = _ox_run(symopt.jax.transform("adafactor_optax", lr=0.05, **kw), jnp, params, grads)
    for k in range(STEPS):
        opt.step(grads[k])
        for a, b, c in zip(ours, theirs[k], via_jax[k]):
            assert rel_err(a, b) <= 1e-9
            assert rel_err(c, b) <= 1e-9
    _assert_optax_state(opt, state[0], OX_SHAPES, 1e-9)
    for j in range(len(OX_SHAPES)):
        assert rel_err(opt.state[j]["ema"], np.asarray(state[4].ema[j])) <= 1e-9


def test_optax_weight_decay_mask_is_a_param_group(ox):
    """optax.adafactor(weight_decay_mask=mask) is symopt's param group of the unmasked params with
    weight_decay_rate None (float64, ≤ 1e-9 elementwise after every step)."""
    from rule_db import _adafactor_optax_f64

    optax, jnp = ox
    shapes = [(4, 6), (5,), (2, 3, 5)]
    mask = [True, False, True]
    params, grads = _data(np.float64, seed=10, shapes=shapes)
    ours = [p.copy() for p in params]
    opt = symopt.optimizer("adafactor_optax", [{"params": [ours[0], ours[2]]},
                                               {"params": [ours[1]], "weight_decay_rate": None}],
                           lr=0.05, min_dim_size_to_factor=3, weight_decay_rate=0.1)
    theirs, _ = _ox_run(_adafactor_optax_f64(optax, jnp, 0.05, 3, weight_decay_rate=0.1, weight_decay_mask=mask),
                        jnp, params, grads)
    for k in range(STEPS):
        opt.step([grads[k][0], grads[k][2], grads[k][1]])
        for a, b in zip(ours, theirs[k]):
            assert rel_err(a, b) <= 1e-9


@pytest.mark.parametrize("kw", [dict(weight_decay_rate=0.01), dict(weight_decay_rate=0.01, momentum=0.9)],
                         ids=["decay", "momentum"])
def test_optax_adafactor_itself_float32(kw, ox):
    """Against optax.adafactor in float32 (its decay in float32 too; its ema in its default dtype_momentum,
    float32): 2e-6 max-norm after every step (measured 3.4e-7: symopt's norms and row/column means are
    float64 sums, Optax's float32)."""
    optax, jnp = ox
    params, grads = _data(np.float32, seed=6, shapes=OX_SHAPES)
    ours = [p.copy() for p in params]
    opt = symopt.optimizer("adafactor_optax", ours, lr=0.05, min_dim_size_to_factor=3, **kw)
    theirs, _ = _ox_run(optax.adafactor(0.05, min_dim_size_to_factor=3, **kw), jnp, params, grads)
    for k in range(STEPS):
        opt.step(grads[k])
        for a, b in zip(ours, theirs[k]):
            assert b.dtype == np.float32
            assert rel_err(a, b, floor=1.0) <= 2e-6


def test_optax_adafactor_torch_adapter_and_npz_checkpoint(tmp_path):
    params, grads = _data(np.float64, seed=7, shapes=[(4, 6), (2, 2), (5,), (5, 2, 6)])
    ref = [p.copy() for p in params]
    opt = symopt.optimizer("adafactor_optax", ref, min_dim_size_to_factor=3, momentum=0.5)
    ts = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    topt = symopt.torch.Optimizer("adafactor_optax", ts, min_dim_size_to_factor=3, momentum=0.5)
    for k in range(4):
        opt.step(grads[k])
        for t, g in zip(ts, grads[k]):
            t.grad = torch.from_numpy(g.copy())
        topt.step()
    for a, t in zip(ref, ts):
        np.testing.assert_array_equal(a, t.detach().numpy())
    opt.save(tmp_path / "ox.npz")
    copies = [p.copy() for p in ref]
    resumed = symopt.load(tmp_path / "ox.npz", copies)
    assert resumed.factored_layouts == ("matrix", "vector", "vector", "matrix")
    assert resumed.factored_axes[3] == (0, 2)         # the (5, 2, 6) param: rows along axis 0, columns along 2
    assert {k: v.shape for k, v in resumed.state[0].items() if k != "step"} == {
        "v_row": (4, 1), "v_col": (1, 6), "ema": (4, 6)}
    assert {k: v.shape for k, v in resumed.state[1].items() if k != "step"} == {"v": (2, 2), "ema": (2, 2)}
    assert {k: v.shape for k, v in resumed.state[3].items() if k != "step"} == {
        "v_row": (5, 2, 1), "v_col": (1, 2, 6), "ema": (5, 2, 6)}
    for k in range(4, 8):
        opt.step(grads[k])
        resumed.step([g.copy() for g in grads[k]])
    for x, y in zip(ref, copies):
        np.testing.assert_array_equal(x, y)
    # a checkpoint whose layouts do not fit its shapes is refused
    import json

    with np.load(tmp_path / "ox.npz") as z:
        arrays = dict(z)
    meta = json.loads(str(arrays["meta"]))
    meta["layouts"][2] = "matrix"          # the (5,) param
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=r"meta\['layouts'\] must give 'matrix' \(only for a param of two or more"):
        symopt.load(tmp_path / "bad.npz", [p.copy() for p in ref])


def test_optax_adafactor_refuses_what_it_cannot_do():
    with pytest.raises(TypeError, match="weight_decay_mask is not a keyword of adafactor_optax: give the params "
                                        "that are not decayed a param group of their own with weight_decay_rate None"):
        symopt.optimizer("adafactor_optax", [np.ones(3)], weight_decay_mask=None)
    with pytest.raises(ValueError, match="momentum"):
        symopt.optimizer("adafactor_optax", [np.ones(3)], momentum=1.5)
    with pytest.raises(ValueError, match="min_dim_size_to_factor must be one number shared by every param group"):
        symopt.optimizer("adafactor_optax", [{"params": [np.ones((3, 3))]},
                                             {"params": [np.ones(3)], "min_dim_size_to_factor": 2}])
    w = np.ones((4, 4))
    opt = symopt.optimizer("adafactor_optax", [w], min_dim_size_to_factor=3)
    opt.step([np.full((4, 4), 0.5)])
    opt.param_groups[0]["min_dim_size_to_factor"] = 8
    with pytest.raises(ValueError, match="min_dim_size_to_factor cannot change after construction"):
        opt.step([np.full((4, 4), 0.5)])
    sd = opt.state_dict()
    opt.param_groups[0]["min_dim_size_to_factor"] = 3
    with pytest.raises(ValueError, match="state_dict has another min_dim_size_to_factor"):
        opt.load_state_dict(sd)


def test_show_prints_the_optax_rule(capsys):
    from symopt.cli import main

    assert main(["show", "adafactor_optax"]) == 0
    out = capsys.readouterr().out
    assert "min_dim_size_to_factor" in out and "optax" in out
