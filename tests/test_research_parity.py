"""The research catalog and composed rules equal their reference libraries' trajectories.

pytorch-optimizer 4.1.0, schedulefree 1.4.1 (torch, float64 default dtype) and Optax 0.2.8
(JAX with x64) run the same closed-loop problem as symopt, each from its own params:

    g_t = h ⊙ (θ_{t-1} − θ*) + n_t      (h > 0 fixed curvatures, n_t fixed noise)

100 steps, two tensors ((3, 4) and (5,)), for every case of ``tests/rule_db.py`` whose
library is one of these (a seed drawn from the case's id).  After every step the params are
compared elementwise (``conftest.rel_err``; |θ| stays in [0.5, 4]) and so is the displacement
θ_t − θ_0 (max-norm relative error), which exposes a wrong constant that the params' rounding
would hide.  Tolerances: the table's "peer" and "peer displacement" ones (1e-9 in float64).
Conventions that differ are stated per case (the case's note, and the rule's doc); rules no
library defines (cautious AdamW) are checked against the NumPy transcription in
tests/references/research.py by test_reference_steps.py.
"""
import types
import zlib

import numpy as np
import pytest
from conftest import rel_err
from rule_db import PEER_SHAPES, PEER_STEPS, case_id, peer_cases, peer_grads, peer_problem

import symopt
from symopt.rulebook import transforms as T

#: (rule info, case index, case) of the table's research-rule cases, per library kind (and the Optax cases
#: of matrix rules: adafactor_optax).
TORCH_CASES = peer_cases("pytorch-optimizer", "schedulefree", group="research")
OPTAX_CASES = peer_cases("optax", group="research") + peer_cases("optax", group="matrix")
#: Composed rules (not built in, so not in the table): params and displacement, float64.
COMPOSED_TOL = 1e-9


def _compare(ours_traj, theirs_traj, theta0):
    worst = {"params": 0.0, "displacement": 0.0}
    for ours, theirs in zip(ours_traj, theirs_traj):
        for j in range(len(PEER_SHAPES)):
            worst["params"] = max(worst["params"], rel_err(ours[j], theirs[j]))
            worst["displacement"] = max(worst["displacement"],
                                        rel_err(ours[j] - theta0[j], theirs[j] - theta0[j], floor=1.0))
    return worst


def _within(info, worst):
    tol = info.tolerance
    return worst["params"] <= tol["peer"][np.float64] and worst["displacement"] <= tol["peer displacement"][np.float64]


def _run_symopt(rule, kw, theta0, target, curv, noise):
    ours = [p.copy() for p in theta0]
    opt = symopt.optimizer(rule, ours, **kw)
    traj = []
    for step in range(PEER_STEPS):
        opt.step(peer_grads(ours, target, curv, noise[step]))
        traj.append([p.copy() for p in ours])
    return traj, opt


def _run_torch(torch, make_opt, theta0, target, curv, noise, before_step=None):
    ps = [torch.nn.Parameter(torch.tensor(p, dtype=torch.float64)) for p in theta0]
    opt = make_opt(ps)
    if hasattr(opt, "train"):
        opt.train()  # schedule-free: train mode (param = y)
    traj = []
    for step in range(PEER_STEPS):
        gs = peer_grads([p.detach().numpy() for p in ps], target, curv, noise[step])
        for p, g in zip(ps, gs):
            p.grad = torch.tensor(g, dtype=torch.float64)
        if before_step is not None:
            before_step(ps)
        opt.step()
        traj.append([p.detach().numpy().copy() for p in ps])
    return traj


@pytest.fixture(scope="module")
def torch_libs():
    """(torch, pytorch_optimizer, schedulefree) with float64 as torch's default dtype."""
    torch = pytest.importorskip("torch")
    po = pytest.importorskip("pytorch_optimizer")
    sf = pytest.importorskip("schedulefree")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch, po, sf
    torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def jx():
    optax = pytest.importorskip("optax")
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    return optax, jax, jnp


@pytest.mark.parametrize("info,k,case", TORCH_CASES, ids=[case_id(i.name, c) for i, _, c in TORCH_CASES])
def test_trajectory_equals_torch_library_f64(info, k, case, torch_libs):
    torch, po, sf = torch_libs
    cid = case_id(info.name, case)
    theta0, target, curv, noise = peer_problem(zlib.crc32(cid.encode()) % 1000)
    ours, _ = _run_symopt(info.name, case.kwargs, theta0, target, curv, noise)
    lib = types.SimpleNamespace(torch=torch, po=po, sf=sf)
    theirs = _run_torch(torch, lambda ps: case.build(lib, ps), theta0, target, curv, noise)
    worst = _compare(ours, theirs, theta0)
    print(f"{cid}: {worst}")
    assert _within(info, worst), worst
    assert max(float(np.max(np.abs(p - p0))) for p, p0 in zip(ours[-1], theta0)) > 1e-3


@pytest.mark.parametrize("info,k,case", OPTAX_CASES, ids=[case_id(i.name, c) for i, _, c in OPTAX_CASES])
def test_trajectory_equals_optax_f64(info, k, case, jx):
    optax, jax, jnp = jx
    cid = case_id(info.name, case)
    theta0, target, curv, noise = peer_problem(zlib.crc32(cid.encode()) % 1000)
    ours, _ = _run_symopt(info.name, case.kwargs, theta0, target, curv, noise)
    tx = case.build(types.SimpleNamespace(optax=optax, jnp=jnp))
    params = [jnp.asarray(p) for p in theta0]
    state = tx.init(params)

    @jax.jit
    def step(params, state, noise_t):
        grads = peer_grads(params, target, curv, noise_t)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    theirs = []
    for t in range(PEER_STEPS):
        params, state = step(params, state, noise[t])
        assert params[0].dtype == jnp.float64
        theirs.append([np.asarray(p) for p in params])
    worst = _compare(ours, theirs, theta0)
    print(f"{cid}: {worst}")
    assert _within(info, worst), worst
    assert max(float(np.max(np.abs(p - p0))) for p, p0 in zip(ours[-1], theta0)) > 1e-3


# -- transforms composed with torch rules, against torch / pytorch-optimizer -----------------------------
def _clip_norm(torch, c):
    return lambda ps: torch.nn.utils.clip_grad_norm_(ps, c)


def _clip_value(torch, c):
    return lambda ps: torch.nn.utils.clip_grad_value_(ps, c)


def _heavy_ball():
    import sympy as sp

    p, g, m = sp.symbols("p g m")
    lr, beta = sp.symbols("lr beta")
    return symopt.Rule("heavy_ball", param=p, grad=g, state={m: 0}, hyper={lr: 1e-2, beta: 0.9},
                       updates=[(m, beta * m + g), (p, p - lr * m)])


COMPOSED = [
    # (id, rule factory, symopt kwargs, torch optimizer factory, hook before torch's step)
    ("adam+clip_global_norm+coupled_weight_decay",
     lambda: symopt.compose("adam", T.clip_global_norm(0.5), T.coupled_weight_decay(0.1, key="l2")),
     dict(lr=1e-2, max_norm=0.5, l2=0.1),
     lambda torch, po, ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.1, foreach=False),
     lambda torch: _clip_norm(torch, 0.5)),
    ("adam+clip_by_value+decoupled_weight_decay",
     lambda: symopt.compose("adam", T.clip_by_value(0.3), T.decoupled_weight_decay(0.05, key="decay")),
     dict(lr=1e-2, clip_value=0.3, decay=0.05),
     lambda torch, po, ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05, foreach=False),
     lambda torch: _clip_value(torch, 0.3)),
    ("adam+lookahead",
     lambda: symopt.compose("adam", T.lookahead(5, 0.5)), dict(lr=1e-2),
     lambda torch, po, ps: po.Lookahead(torch.optim.Adam(ps, lr=1e-2, foreach=False), k=5, alpha=0.5), None),
    ("heavy_ball+nesterov",   # the user rule of the core issue; F(m, g) = β m + g applied once more
     lambda: symopt.compose(_heavy_ball(), T.nesterov()), dict(lr=1e-2, beta=0.9),
     lambda torch, po, ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True, foreach=False), None),
]


@pytest.mark.parametrize("case", COMPOSED, ids=[c[0] for c in COMPOSED])
def test_composed_rule_equals_torch_chain_f64(case, torch_libs):
    torch, po, _ = torch_libs
    cid, make_rule, kw, make_opt, hook = case
    theta0, target, curv, noise = peer_problem(zlib.crc32(cid.encode()) % 1000)
    ours, _ = _run_symopt(make_rule(), kw, theta0, target, curv, noise)
    theirs = _run_torch(torch, lambda ps: make_opt(torch, po, ps), theta0, target, curv, noise,
                        before_step=None if hook is None else hook(torch))
    worst = _compare(ours, theirs, theta0)
    print(f"{cid}: {worst}")
    assert max(worst.values()) <= COMPOSED_TOL, worst


def test_issue_example_cautious_and_global_norm_equals_numpy():
    """compose("adam", cautious(), clip_global_norm(1.0)): the clipped gradient feeds Adam, the mask
    compares Adam's step with it; one reduction pass (global Σg², per-tensor Σφ), one elementwise pass."""
    rule = symopt.compose("adam", T.cautious(), T.clip_global_norm(1.0))
    assert "\\sum" in rule.latex()
    theta0, target, curv, noise = peer_problem(7)
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    ours, opt = _run_symopt(rule, dict(lr=lr), theta0, target, curv, noise)
    ps = [p.copy() for p in theta0]
    ms = [np.zeros_like(p) for p in ps]
    vs = [np.zeros_like(p) for p in ps]
    theirs = []
    for t in range(1, PEER_STEPS + 1):
        gs = peer_grads(ps, target, curv, noise[t - 1])
        norm = np.sqrt(sum(float(np.sum(g * g)) for g in gs))
        gs = [g * min(1.0, 1.0 / (norm + 1e-6)) for g in gs]
        for j, g in enumerate(gs):
            ms[j] = ms[j] + (1 - b1) * (g - ms[j])
            vs[j] = b2 * vs[j] + (1 - b2) * g * g
            u = (ms[j] / (1 - b1**t)) / (np.sqrt(vs[j]) / np.sqrt(1 - b2**t) + eps)
            phi = (u * g > 0).astype(float)
            ps[j] = ps[j] - lr * u * phi * phi.size / (phi.sum() + 1)
        theirs.append([p.copy() for p in ps])
    worst = _compare(ours, theirs, theta0)
    assert max(worst.values()) <= COMPOSED_TOL, worst
    assert opt._reduce is not None


def test_ema_transform_tracks_the_params():
    rule = symopt.compose("notes.adam_warmup", T.ema(0.9))
    theta0, target, curv, noise = peer_problem(11)
    ours, opt = _run_symopt(rule, dict(lr=1e-2), theta0, target, curv, noise)
    ema = [p.copy() for p in theta0]
    for step in ours:
        ema = [0.9 * e + 0.1 * p for e, p in zip(ema, step)]
    for j in range(len(PEER_SHAPES)):
        assert rel_err(opt.state[j]["ema"], ema[j]) <= 1e-12


def test_sign_transforms_on_the_gradient_and_on_the_update():
    """sign(on="grad"): m ← βm + sign(g); sign(on="update"): θ ← θ + α sign(Δ) = θ − α sign(m)."""
    theta0, target, curv, noise = peer_problem(13)
    for on in ("grad", "update"):
        rule = symopt.compose(_heavy_ball(), T.sign(on))
        ours, _ = _run_symopt(rule, {"lr": 1e-2, "beta": 0.8}, theta0, target, curv, noise)
        ps = [p.copy() for p in theta0]
        ms = [np.zeros_like(p) for p in ps]
        theirs = []
        for t in range(PEER_STEPS):
            gs = peer_grads(ps, target, curv, noise[t])
            for j, g in enumerate(gs):
                ms[j] = 0.8 * ms[j] + (np.sign(g) if on == "grad" else g)
                ps[j] = ps[j] - 1e-2 * (ms[j] if on == "grad" else np.sign(ms[j]))
            theirs.append([p.copy() for p in ps])
        worst = _compare(ours, theirs, theta0)
        assert max(worst.values()) <= COMPOSED_TOL, (on, worst)
