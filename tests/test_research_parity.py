"""The research catalog and composed rules equal their reference libraries' trajectories.

pytorch-optimizer 4.1.0, schedulefree 1.4.1 (torch, float64 default dtype) and Optax 0.2.8
(JAX with x64) run the same closed-loop problem as symopt, each from its own params:

    g_t = h ⊙ (θ_{t-1} − θ*) + n_t      (h > 0 fixed curvatures, n_t fixed noise)

100 steps, two tensors ((3, 4) and (5,)).  After every step the params are compared
elementwise (relative error; |θ| stays in [0.5, 4]) and so is the displacement θ_t − θ_0
(max-norm relative error), which exposes a wrong constant that the params' rounding would
hide.  Tolerance 1e-9 in float64.  Conventions that differ are stated per case (and in the
rule's doc); rules no library defines (cautious AdamW) are checked against the NumPy
transcription in tests/references/research.py by test_reference_steps.py.
"""
import zlib

import numpy as np
import pytest

import symopt
from symopt.rulebook import transforms as T

STEPS = 100
RTOL_F64 = 1e-9
SHAPES = [(3, 4), (5,)]


def _problem(seed):
    rng = np.random.default_rng(seed)
    theta0 = [rng.uniform(2.0, 3.0, s) * rng.choice([-1.0, 1.0], s) for s in SHAPES]
    target = [rng.normal(0.0, 1.0, s) for s in SHAPES]
    curv = [rng.uniform(0.1, 2.0, s) for s in SHAPES]
    noise = [[rng.normal(0.0, 0.5, s) for s in SHAPES] for _ in range(STEPS)]
    return theta0, target, curv, noise


def _grads(params, target, curv, noise_t):
    return [h * (p - c) + n for p, c, h, n in zip(params, target, curv, noise_t)]


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def _rel_norm(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _compare(ours_traj, theirs_traj, theta0):
    worst = {"params": 0.0, "displacement": 0.0}
    for ours, theirs in zip(ours_traj, theirs_traj):
        for j in range(len(SHAPES)):
            worst["params"] = max(worst["params"], _rel(ours[j], theirs[j]))
            worst["displacement"] = max(worst["displacement"], _rel_norm(ours[j] - theta0[j], theirs[j] - theta0[j]))
    return worst


def _run_symopt(rule, kw, theta0, target, curv, noise):
    ours = [p.copy() for p in theta0]
    opt = symopt.optimizer(rule, ours, **kw)
    traj = []
    for step in range(STEPS):
        opt.step(_grads(ours, target, curv, noise[step]))
        traj.append([p.copy() for p in ours])
    return traj, opt


def _run_torch(torch, make_opt, theta0, target, curv, noise, before_step=None):
    ps = [torch.nn.Parameter(torch.tensor(p, dtype=torch.float64)) for p in theta0]
    opt = make_opt(ps)
    if hasattr(opt, "train"):
        opt.train()  # schedule-free: train mode (param = y)
    traj = []
    for step in range(STEPS):
        gs = _grads([p.detach().numpy() for p in ps], target, curv, noise[step])
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


def _qhadam_f64(torch, opt):
    """pytorch-optimizer keeps QHAdam's weights Σβ^i in float32 tensors (1e-8 relative); start them in float64."""
    for group in opt.param_groups:
        for p in group["params"]:
            opt.state[p].update(beta1_weight=torch.zeros(1, dtype=torch.float64),
                                beta2_weight=torch.zeros(1, dtype=torch.float64),
                                exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
    return opt


# (symopt rule, symopt keyword arguments, factory(torch, pytorch_optimizer, schedulefree, params), note)
PO = "pytorch-optimizer"
TORCH_CASES = [
    ("adan", {}, lambda t, po, sf, ps: po.Adan(ps, weight_decouple=False, foreach=False), PO),
    ("adan", dict(lr=3e-3, betas=(0.9, 0.8, 0.95), weight_decay=0.05),
     lambda t, po, sf, ps: po.Adan(ps, lr=3e-3, betas=(0.9, 0.8, 0.95), weight_decay=0.05, weight_decouple=False,
                                   foreach=False), PO),
    ("adopt", dict(lr=1e-2), lambda t, po, sf, ps: po.ADOPT(ps, lr=1e-2, foreach=False), PO),
    ("adopt", dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1),
     lambda t, po, sf, ps: po.ADOPT(ps, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1, foreach=False), PO),
    ("laprop", dict(lr=1e-2, weight_decay=0.1),
     lambda t, po, sf, ps: po.LaProp(ps, lr=1e-2, weight_decay=0.1, foreach=False),
     "foreach=False: pytorch-optimizer's foreach path rounds the step size to float32"),
    ("adabound", dict(lr=1e-2, weight_decay=0.05),
     lambda t, po, sf, ps: po.AdaBound(ps, lr=1e-2, weight_decay=0.05, foreach=False), PO),
    ("amsbound", dict(lr=1e-2), lambda t, po, sf, ps: po.AdaBound(ps, lr=1e-2, ams_bound=True, foreach=False), PO),
    ("adamod", dict(lr=1e-2, weight_decay=0.05),
     lambda t, po, sf, ps: po.AdaMod(ps, lr=1e-2, weight_decay=0.05, foreach=False), PO),
    ("qhadam", dict(lr=1e-2),
     lambda t, po, sf, ps: _qhadam_f64(t, po.QHAdam(ps, lr=1e-2, betas=(0.995, 0.999), nus=(0.7, 1.0), foreach=False)),
     "symopt's defaults are the paper's betas/nus (pytorch-optimizer's are Adam's); its float32 weights made float64"),
    ("qhm", dict(lr=1e-2, momentum=0.9, weight_decay=0.01),
     lambda t, po, sf, ps: po.QHM(ps, lr=1e-2, momentum=0.9, nu=0.7, weight_decay=0.01, foreach=False), PO),
    ("sgd_schedulefree", dict(lr=0.05), lambda t, po, sf, ps: sf.SGDScheduleFree(ps, lr=0.05, foreach=False),
     "schedulefree, train mode; the param is y"),
    ("sgd_schedulefree", dict(lr=0.05, momentum=0.5, weight_decay=0.1),
     lambda t, po, sf, ps: sf.SGDScheduleFree(ps, lr=0.05, momentum=0.5, weight_decay=0.1, foreach=False), "y"),
    ("adamw_schedulefree", dict(lr=1e-2, weight_decay=0.1),
     lambda t, po, sf, ps: sf.AdamWScheduleFree(ps, lr=1e-2, weight_decay=0.1, foreach=False), "y"),
    ("mars_adamw", dict(lr=1e-2, weight_decay=0.05),
     lambda t, po, sf, ps: po.MARS(ps, lr=1e-2, weight_decay=0.05, optimize_1d=True, foreach=False),
     "optimize_1d=True: every tensor takes MARS's path (pytorch-optimizer sends 1-D tensors to AdamW)"),
    ("cautious_lion", dict(lr=1e-3, weight_decay=0.1),
     lambda t, po, sf, ps: po.Lion(ps, lr=1e-3, weight_decay=0.1, cautious=True, foreach=False), PO),
    ("signsgd", dict(lr=1e-2), lambda t, po, sf, ps: po.SignSGD(ps, lr=1e-2, momentum=0.0, foreach=False), PO),
    ("signum", dict(lr=1e-2), lambda t, po, sf, ps: po.SignSGD(ps, lr=1e-2, momentum=0.9, foreach=False), PO),
    ("adabelief_rectified", dict(lr=1e-2, weight_decay=0.05),
     lambda t, po, sf, ps: po.AdaBelief(ps, lr=1e-2, weight_decay=0.05, rectify=True, foreach=False), PO),
    ("adabelief_rectified", dict(lr=1e-2, degenerated_to_sgd=False),
     lambda t, po, sf, ps: po.AdaBelief(ps, lr=1e-2, rectify=True, degenerated_to_sgd=False, foreach=False), PO),
    ("tiger", dict(lr=1e-2), lambda t, po, sf, ps: po.Tiger(ps, lr=1e-2, foreach=False), PO),
    ("madgrad", dict(lr=1e-2, weight_decay=0.01),
     lambda t, po, sf, ps: po.MADGRAD(ps, lr=1e-2, weight_decay=0.01, foreach=False), PO),
    ("diffgrad", dict(lr=1e-2, weight_decay=0.05),
     lambda t, po, sf, ps: po.DiffGrad(ps, lr=1e-2, weight_decay=0.05, foreach=False), PO),
    ("ademamix", dict(lr=1e-2), lambda t, po, sf, ps: po.AdEMAMix(ps, lr=1e-2, foreach=False), PO),
    ("ademamix", dict(lr=1e-2, t_alpha_beta3=30.0, weight_decay=0.05),
     lambda t, po, sf, ps: po.AdEMAMix(ps, lr=1e-2, t_alpha_beta3=30, weight_decay=0.05, foreach=False),
     "t_alpha_beta3: α and β3 warm-ups as per-step scalars"),
    ("stable_adamw", dict(lr=1e-2), lambda t, po, sf, ps: po.StableAdamW(ps, lr=1e-2, foreach=False), PO),
]


def _case_id(case):
    name, kw = case[0], case[1]
    return f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items())}"


@pytest.mark.parametrize("case", TORCH_CASES, ids=[_case_id(c) for c in TORCH_CASES])
def test_trajectory_equals_torch_library_f64(case, torch_libs):
    torch, po, sf = torch_libs
    name, kw, make, _note = case
    theta0, target, curv, noise = _problem(zlib.crc32(_case_id(case).encode()) % 1000)
    ours, _ = _run_symopt(name, kw, theta0, target, curv, noise)
    theirs = _run_torch(torch, lambda ps: make(torch, po, sf, ps), theta0, target, curv, noise)
    worst = _compare(ours, theirs, theta0)
    print(f"{_case_id(case)}: {worst}")
    assert max(worst.values()) <= RTOL_F64, worst
    assert max(float(np.max(np.abs(p - p0))) for p, p0 in zip(ours[-1], theta0)) > 1e-3


def _adafactor_f64(optax, jnp, lr, **kw):
    """optax.adafactor(factored=False) with its decay 1 − t^(−0.8) computed in float64 (Optax: float32)."""
    from optax._src import factorized

    def decay64(i, exponent=0.8):
        return 1.0 - jnp.asarray(i + 1, jnp.float64) ** (-exponent)

    return optax.chain(
        factorized.scale_by_factored_rms(factored=False, decay_rate=kw.get("decay_rate", 0.8),
                                         decay_rate_fn=decay64, epsilon=1e-30),
        optax.clip_by_block_rms(kw.get("clipping_threshold", 1.0)),
        optax.scale_by_learning_rate(lr, flip_sign=False),
        optax.scale_by_param_block_rms(),
        optax.add_decayed_weights(kw.get("weight_decay_rate", 0.0)),
        optax.scale(-1.0),
    )


# (symopt rule, kwargs, factory(optax, jnp), note)
OPTAX_CASES = [
    ("lamb", dict(lr=1e-2), lambda ox, jnp: ox.lamb(1e-2), "optax.lamb"),
    ("lamb", dict(lr=2e-2, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-10, weight_decay=0.1),
     lambda ox, jnp: ox.lamb(2e-2, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-10, weight_decay=0.1), "optax.lamb"),
    ("lars", dict(lr=0.5), lambda ox, jnp: ox.lars(0.5), "Optax keeps the momentum of −lr·u (params compared)"),
    ("lars", dict(lr=0.5, weight_decay=0.1, trust_coefficient=0.01, eps=1e-6, momentum=0.8, nesterov=True),
     lambda ox, jnp: ox.lars(0.5, weight_decay=0.1, trust_coefficient=0.01, eps=1e-6, momentum=0.8, nesterov=True),
     "optax.lars"),
    ("signsgd", dict(lr=1e-2), lambda ox, jnp: ox.sign_sgd(1e-2), "optax.sign_sgd"),
    ("signum", dict(lr=1e-2, momentum=0.8), lambda ox, jnp: ox.signum(1e-2, beta=0.8), "optax.signum"),
    ("adafactor", dict(lr=0.05), lambda ox, jnp: _adafactor_f64(ox, jnp, 0.05),
     "decay 1 − t^-0.8 in float64 (Optax computes it in float32)"),
    ("adafactor", dict(lr=0.05, clipping_threshold=0.5, weight_decay_rate=0.01),
     lambda ox, jnp: _adafactor_f64(ox, jnp, 0.05, clipping_threshold=0.5, weight_decay_rate=0.01), "float64 decay"),
    ("fromage", dict(lr=1e-2), lambda ox, jnp: ox.fromage(1e-2), "optax.fromage"),
    ("ademamix", dict(lr=1e-2), lambda ox, jnp: ox.contrib.ademamix(1e-2), "optax.contrib.ademamix"),
]


@pytest.mark.parametrize("case", OPTAX_CASES, ids=[_case_id(c) for c in OPTAX_CASES])
def test_trajectory_equals_optax_f64(case, jx):
    optax, jax, jnp = jx
    name, kw, make, _note = case
    theta0, target, curv, noise = _problem(zlib.crc32(_case_id(case).encode()) % 1000)
    ours, _ = _run_symopt(name, kw, theta0, target, curv, noise)
    tx = make(optax, jnp)
    params = [jnp.asarray(p) for p in theta0]
    state = tx.init(params)

    @jax.jit
    def step(params, state, noise_t):
        grads = _grads(params, target, curv, noise_t)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    theirs = []
    for t in range(STEPS):
        params, state = step(params, state, noise[t])
        assert params[0].dtype == jnp.float64
        theirs.append([np.asarray(p) for p in params])
    worst = _compare(ours, theirs, theta0)
    print(f"{_case_id(case)}: {worst}")
    assert max(worst.values()) <= RTOL_F64, worst
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
    theta0, target, curv, noise = _problem(zlib.crc32(cid.encode()) % 1000)
    ours, _ = _run_symopt(make_rule(), kw, theta0, target, curv, noise)
    theirs = _run_torch(torch, lambda ps: make_opt(torch, po, ps), theta0, target, curv, noise,
                        before_step=None if hook is None else hook(torch))
    worst = _compare(ours, theirs, theta0)
    print(f"{cid}: {worst}")
    assert max(worst.values()) <= RTOL_F64, worst


def test_issue_example_cautious_and_global_norm_equals_numpy():
    """compose("adam", cautious(), clip_global_norm(1.0)): the clipped gradient feeds Adam, the mask
    compares Adam's step with it; one reduction pass (global Σg², per-tensor Σφ), one elementwise pass."""
    rule = symopt.compose("adam", T.cautious(), T.clip_global_norm(1.0))
    assert "\\sum" in rule.latex()
    theta0, target, curv, noise = _problem(7)
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    ours, opt = _run_symopt(rule, dict(lr=lr), theta0, target, curv, noise)
    ps = [p.copy() for p in theta0]
    ms = [np.zeros_like(p) for p in ps]
    vs = [np.zeros_like(p) for p in ps]
    theirs = []
    for t in range(1, STEPS + 1):
        gs = _grads(ps, target, curv, noise[t - 1])
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
    assert max(worst.values()) <= RTOL_F64, worst
    assert opt._reduce is not None


def test_ema_transform_tracks_the_params():
    rule = symopt.compose("notes.adam_warmup", T.ema(0.9))
    theta0, target, curv, noise = _problem(11)
    ours, opt = _run_symopt(rule, dict(lr=1e-2), theta0, target, curv, noise)
    ema = [p.copy() for p in theta0]
    for step in ours:
        ema = [0.9 * e + 0.1 * p for e, p in zip(ema, step)]
    for j in range(len(SHAPES)):
        assert _rel(opt.state[j]["ema"], ema[j]) <= 1e-12


def test_sign_transforms_on_the_gradient_and_on_the_update():
    """sign(on="grad"): m ← βm + sign(g); sign(on="update"): θ ← θ + α sign(Δ) = θ − α sign(m)."""
    theta0, target, curv, noise = _problem(13)
    for on in ("grad", "update"):
        rule = symopt.compose(_heavy_ball(), T.sign(on))
        ours, _ = _run_symopt(rule, {"lr": 1e-2, "beta": 0.8}, theta0, target, curv, noise)
        ps = [p.copy() for p in theta0]
        ms = [np.zeros_like(p) for p in ps]
        theirs = []
        for t in range(STEPS):
            gs = _grads(ps, target, curv, noise[t])
            for j, g in enumerate(gs):
                ms[j] = 0.8 * ms[j] + (np.sign(g) if on == "grad" else g)
                ps[j] = ps[j] - 1e-2 * (ms[j] if on == "grad" else np.sign(ms[j]))
            theirs.append([p.copy() for p in ps])
        worst = _compare(ours, theirs, theta0)
        assert max(worst.values()) <= RTOL_F64, (on, worst)


def test_symopt_list_names_the_libraries_these_tests_compare_with():
    from symopt.provenance import BY_RULE

    for name, *_rest in TORCH_CASES:
        lib = "schedulefree 1.4.1" if "schedulefree" in name else "pytorch-optimizer 4.1.0"
        assert lib in BY_RULE[name], name
    for name, *_rest in OPTAX_CASES:
        assert "optax 0.2.8" in BY_RULE[name], name
    research = [n for n in symopt.rules() if symopt.family(n).group == "research"]
    assert sorted(BY_RULE) == sorted(research)
