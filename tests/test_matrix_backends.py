"""Matrix rules (Muon) through the generated torch and JAX modules, and torch param groups with their own rule.

References: the Numba kernels (``symopt.optimizer``), a float64 NumPy transcription of torch's Muon
(``tests/test_matrix.py``), ``torch.optim.Muon``/``AdamW`` and ``optax.contrib.muon``.
"""

import numpy as np
import pytest
from conftest import rel_err
from test_matrix import SHAPES, TORCH_BF16_TOL, newton_schulz64

import symopt

torch = pytest.importorskip("torch")
import symopt.torch

#: float64 after 20 steps: the same float64 arithmetic in another order (BLAS vs torch/XLA matmul).
TOL64 = 1e-9
KW = [{"lr": 0.02}, {"lr": 0.02, "nesterov": False, "momentum": 0.9, "adjust_lr_fn": "match_rms_adamw",
                     "ns_steps": 4, "ns_coefficients": (3.0, -3.2, 1.2), "weight_decay": 0.0}]


def _grads(shapes, steps, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]


def _numba_run(shapes, grads, kw, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s) for s in shapes]
    opt = symopt.optimizer("muon", params, **kw)
    for gs in grads:
        opt.step(gs)
    return params


@pytest.fixture(scope="module")
def jx():
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    import symopt.jax  # noqa: F401

    yield jax
    jax.config.update("jax_enable_x64", old)


# ----------------------------------------------------------------------------- the generated modules
@pytest.mark.parametrize("kw", KW, ids=["defaults", "options"])
def test_torch_backend_matches_numba_float64(kw):
    grads = _grads(SHAPES, 20, 1)
    ref = _numba_run(SHAPES, grads, kw)
    rng = np.random.default_rng(0)
    params = [torch.tensor(rng.standard_normal(s), requires_grad=True) for s in SHAPES]
    opt = symopt.torch.Optimizer("muon", params, backend="torch", **kw)
    assert isinstance(opt, symopt.torch.TensorOptimizer)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = torch.tensor(g)
        opt.step()
    for p, r in zip(params, ref):
        assert rel_err(p.detach().numpy(), r, floor=1) <= TOL64


@pytest.mark.parametrize("kw", KW, ids=["defaults", "options"])
def test_jax_transform_matches_numba_float64(jx, kw):
    import optax

    grads = _grads(SHAPES, 20, 2)
    ref = _numba_run(SHAPES, grads, kw)
    rng = np.random.default_rng(0)
    params = [jx.numpy.asarray(rng.standard_normal(s)) for s in SHAPES]
    tx = symopt.jax.transform("muon", **kw)
    state = tx.init(params)
    update = jx.jit(tx.update)
    for gs in grads:
        updates, state = update([jx.numpy.asarray(g) for g in gs], state, params)
        params = optax.apply_updates(params, updates)
    for p, r in zip(params, ref):
        assert rel_err(np.asarray(p), r, floor=1) <= TOL64


def test_jax_transform_matches_optax_contrib_muon(jx):
    """optax.contrib.muon, keywords mapped to torch's Muon (float64, 2-D params, 20 steps, ≤ 1e-9).

    Optax's momentum is bias-corrected (μ̂ = μ/(1 − β^t)); without Nesterov that is a factor the
    Frobenius normalization removes, so ``nesterov=False`` on both sides (Optax's Nesterov mixes
    corrections of two steps, torch's does not).  Optax divides by ``‖U‖ + eps``, torch by
    ``max(‖U‖, eps)``: Optax ``eps=0``, symopt ``eps=1e-30``.  Scaling: ``consistent_rms=0.2`` is
    ``adjust_lr_fn="match_rms_adamw"``; Optax's default width scaling √max(1, fan_out/fan_in) reads a
    weight as (in, out), torch's √max(1, rows/cols) as (out, in): symopt steps the transposes there.
    Same ``ns_coeffs``/``ns_steps``, ``beta=momentum``, ``weight_decay`` (multiplied by lr on both)."""
    import optax
    from optax.contrib import muon

    jnp = jx.numpy
    shapes = [(5, 4), (4, 6)]
    grads = _grads(shapes, 20, 3)
    common = {"ns_steps": 4, "ns_coeffs": (3.0, -3.2, 1.2), "beta": 0.9, "eps": 0.0, "weight_decay": 0.05,
              "nesterov": False}
    ours = {"ns_steps": 4, "ns_coefficients": (3.0, -3.2, 1.2), "momentum": 0.9, "eps": 1e-30,
            "weight_decay": 0.05, "nesterov": False, "lr": 0.02}
    for rms, adjust, flip in [(0.2, "match_rms_adamw", False), (None, None, True)]:
        rng = np.random.default_rng(4)
        start = [rng.standard_normal(s) for s in shapes]
        theirs_tx = muon(learning_rate=0.02, consistent_rms=rms, **common)
        ours_tx = symopt.jax.transform("muon", adjust_lr_fn=adjust, **ours)
        a = [jnp.asarray(p) for p in start]
        b = [jnp.asarray(p.T if flip else p) for p in start]
        sa, sb = theirs_tx.init(a), ours_tx.init(b)
        theirs_update, ours_update = jx.jit(theirs_tx.update), jx.jit(ours_tx.update)
        for gs in grads:
            ua, sa = theirs_update([jnp.asarray(g) for g in gs], sa, a)
            ub, sb = ours_update([jnp.asarray(g.T if flip else g) for g in gs], sb, b)
            a, b = optax.apply_updates(a, ua), optax.apply_updates(b, ub)
        for x, y in zip(a, b):
            assert rel_err(np.asarray(y).T if flip else np.asarray(y), np.asarray(x), floor=1) <= TOL64


def test_torch_backend_within_bf16_of_torch_optim_muon():
    """float32 params: symopt iterates in float32, torch.optim.Muon in bfloat16 (tests/test_matrix.py's
    tolerance); bfloat16 params: symopt iterates in float32 and rounds the param to bfloat16 after every
    step, so it is compared with the float64 transcription within bfloat16's rounding (up to 2⁻⁹ of the
    entry per write, 20 writes: measured 1.6e-2 of the largest entry; torch.optim.Muon on the same
    bfloat16 params is 3.9e-2 away)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn((8, 6), generator=gen)
    w_ref, w_bf = w.clone(), w.to(torch.bfloat16)
    ours = symopt.torch.Optimizer("muon", [w], backend="torch", lr=0.02)
    theirs = torch.optim.Muon([w_ref], lr=0.02)
    low = symopt.torch.Optimizer("muon", [w_bf], backend="torch", lr=0.02)
    ref, buf = w.double().numpy(), np.zeros((8, 6))
    for _ in range(20):
        g = torch.randn((8, 6), generator=gen)
        w.grad, w_ref.grad, w_bf.grad = g.clone(), g.clone(), g.to(torch.bfloat16)
        ours.step()
        theirs.step()
        low.step()
        g64 = g.to(torch.bfloat16).double().numpy()
        buf = buf + 0.05 * (g64 - buf)
        ref = ref * (1 - 0.02 * 0.1) - 0.02 * np.sqrt(8 / 6) * newton_schulz64(g64 + 0.95 * (buf - g64))
    assert rel_err(w.numpy(), w_ref.numpy(), floor=1) <= TORCH_BF16_TOL
    assert w_bf.dtype == torch.bfloat16 and low.state[w_bf]["momentum_buffer"].dtype == torch.float32
    assert rel_err(w_bf.double().numpy(), ref, floor=1) <= 2.5e-2


def test_compiled_muon_one_graph_across_lr_changes():
    """compile=True captures the whole Muon step (the Newton–Schulz loop unrolled) in one graph; lr changes
    never recompile (a CompileCounter backend: dynamo only) and the result is the eager one."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    runs = []
    for compile in ({"backend": counter}, False):
        gen = torch.Generator().manual_seed(5)
        params = [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in ((5, 4), (3, 7))]
        opt = symopt.torch.Optimizer("muon", params, backend="torch", compile=compile)
        for t in range(4):
            opt.param_groups[0]["lr"] = 0.01 * (t + 1)
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            opt.step()
        runs.append(params)
    assert counter.frame_count == 1
    for x, y in zip(*runs):
        assert rel_err(x.detach().numpy(), y.detach().numpy(), floor=1) <= 1e-12


def test_matrix_rule_refuses_vectors_on_array_backends(jx):
    with pytest.raises(ValueError, match="at least 2-D"):
        symopt.torch.Optimizer("muon", [torch.zeros(4, requires_grad=True)], backend="torch")
    with pytest.raises(ValueError, match="at least 2-D"):
        symopt.jax.transform("muon").init([jx.numpy.zeros(4)])


def test_cli_shows_the_generated_matrix_modules(capsys):
    from symopt.cli import main

    assert main(["show", "muon", "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert "def muon_step(" in out and "_a = _x @ _x.T" in out and "for _ in range(count):" in out
    assert main(["show", "muon", "--backend", "jax"]) == 0
    out = capsys.readouterr().out
    assert "def muon_scalars(" in out and "lax.fori_loop(0, count, _body, _x)" in out


# ----------------------------------------------------------------------------- groups with their own rule
class _Float64Muon:
    """torch's ``_single_tensor_muon`` in float64 NumPy without the bfloat16 cast, one step at a time."""

    def __init__(self, params, weight_decay=0.1, momentum=0.95):
        self.params = [p.copy() for p in params]
        self.bufs = [np.zeros_like(p) for p in params]
        self.wd, self.mu = weight_decay, momentum

    def step(self, grads, lr):
        for k, (p, g) in enumerate(zip(self.params, grads)):
            self.bufs[k] = self.bufs[k] + (1 - self.mu) * (g - self.bufs[k])
            u = g + self.mu * (self.bufs[k] - g)
            ratio = np.sqrt(max(1, p.shape[0] / p.shape[1]))
            self.params[k] = p * (1 - lr * self.wd) - lr * ratio * newton_schulz64(u)


def _aux_model(seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(6, 4), (4, 5), (4,), (5,)]
    return [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in shapes]


def _aux_groups(params, **adamw):
    return [{"params": params[:2]}, {"params": params[2:], "rule": "adamw", "lr": 3e-3, **adamw}]


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_muon_with_aux_adamw_side_by_side_with_torch_and_resume(backend):
    """MuonWithAuxAdam's shape with an LR scheduler on every group: the Muon part equals the float64
    transcription (≤ 1e-9) and torch.optim.Muon within bfloat16; the AdamW part equals torch.optim.AdamW
    (float64, ≤ 1e-12); a fresh optimizer loading state_dict() resumes exactly."""
    params = _aux_model(0)
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt = symopt.torch.Optimizer(rule="muon", params=_aux_groups(params), lr=0.02, backend=backend)
    assert isinstance(opt, symopt.torch.Optimizer) and [g["rule"] for g in opt.param_groups] == ["muon", "adamw"]
    assert {type(part).__name__ for part in opt.parts} == {"Optimizer" if backend == "numba" else "TensorOptimizer"}
    t_muon = torch.optim.Muon(twins[:2], lr=0.02)
    t_adamw = torch.optim.AdamW(twins[2:], lr=3e-3)
    ref = _Float64Muon([p.detach().numpy() for p in params[:2]])
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.9) for o in (opt, t_muon, t_adamw)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(12):
        lr = opt.param_groups[0]["lr"]
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
        for p, q, g in zip(params, twins, grads):
            p.grad, q.grad = g.clone(), g.clone()
        for o in (opt, t_muon, t_adamw):
            o.step()
        ref.step([g.numpy() for g in grads[:2]], lr)
        for s in schedulers:
            s.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(3e-3 * 0.9**12)
    for p, r, q in zip(params[:2], ref.params, twins[:2]):
        assert rel_err(p.detach().numpy(), r, floor=1) <= TOL64
        assert rel_err(p.detach().numpy(), q.detach().numpy(), floor=1) <= TORCH_BF16_TOL
    for p, q in zip(params[2:], twins[2:]):
        assert rel_err(p.detach().numpy(), q.detach().numpy(), floor=1) <= 1e-12

    sd = opt.state_dict()
    assert [g["rule"] for g in sd["param_groups"]] == ["muon", "adamw"]
    assert sd["param_groups"][1]["params"] == [2, 3] and set(sd["state"][3]) == {"step", "exp_avg", "exp_avg_sq"}
    copies = [p.detach().clone().requires_grad_() for p in params]
    fresh = symopt.torch.Optimizer("muon", _aux_groups(copies, lr=1.0), lr=0.5, backend=backend)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[1]["lr"] == opt.param_groups[1]["lr"]
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
        for p, q, g in zip(params, copies, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        fresh.step()
    for p, q in zip(params, copies):
        assert torch.equal(p, q)


def test_grouped_checkpoint_with_other_rules_is_refused():
    opt = symopt.torch.Optimizer("muon", _aux_groups(_aux_model(2)))
    sd = opt.state_dict()
    swapped = {**sd, "param_groups": [{**sd["param_groups"][0], "rule": "adamw"}, sd["param_groups"][1]]}
    before = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    with pytest.raises(ValueError, match="group 0 is for rule 'adamw', but this optimizer's group 0 runs 'muon'"):
        opt.load_state_dict(swapped)
    with pytest.raises(ValueError, match=r"saved by symopt rule 'muon\+adamw'; this optimizer runs 'adamw'"):
        symopt.torch.Optimizer("adamw", [p for g in opt.param_groups for p in g["params"]]).load_state_dict(sd)
    assert all(torch.equal(p, b) for p, b in zip([p for g in opt.param_groups for p in g["params"]], before))


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_grouped_checks_every_gradient_before_any_rule_steps(backend, policy):
    params = _aux_model(3)
    opt = symopt.torch.Optimizer("muon", _aux_groups(params), backend=backend, on_nonfinite=policy)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    before = [p.detach().clone() for p in params]
    state = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state[p].items()} for p in params]
    params[3].grad = torch.tensor([1.0, float("nan"), 0.0, 0.0, 0.0], dtype=torch.float64)
    if policy == "raise":
        with pytest.raises(symopt.NonFiniteGradientError):
            opt.step()
    else:
        opt.step()
        assert opt.skipped_steps == 1
    for p, b, s in zip(params, before, state):
        assert torch.equal(p, b)
        assert all(torch.equal(opt.state[p][k], v) if isinstance(v, torch.Tensor) else opt.state[p][k] == v
                   for k, v in s.items())


def test_user_matrix_rule_through_the_torch_backend():
    """A user's Iterate rule (tests/test_matrix.py's cubic Newton–Schulz) gets its torch module from the
    user cache, equal to its Numba kernels (float64, 5 steps)."""
    from test_matrix import newton_schulz_rule

    rng = np.random.default_rng(7)
    start = rng.standard_normal((7, 3))
    grads = [rng.standard_normal((7, 3)) for _ in range(5)]
    ref = start.copy()
    numba_opt = symopt.optimizer(newton_schulz_rule(), [ref])
    w = torch.tensor(start, requires_grad=True)
    opt = symopt.torch.Optimizer(newton_schulz_rule(), [w], backend="torch")
    for g in grads:
        numba_opt.step([g])
        w.grad = torch.tensor(g)
        opt.step()
    assert rel_err(w.detach().numpy(), ref, floor=1) <= 1e-12


def test_grouped_add_param_group_deepcopy_and_hooks():
    """A new group joins its rule's optimizer (or starts one for a new rule); step hooks run once per step;
    a deep copy steps as the original."""
    import copy

    gen = torch.Generator().manual_seed(8)
    params = [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in ((6, 4), (4,), (3, 5))]
    extra = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    opt = symopt.torch.Optimizer("muon", [{"params": [params[0]]}, {"params": [params[1]], "rule": "adamw"}],
                                 lr=0.02)
    calls = []
    opt.register_step_pre_hook(lambda *_: calls.append(1))
    opt.add_param_group({"params": [params[2]]})
    opt.add_param_group({"params": [extra], "rule": "sgd", "lr": 0.1})
    assert [g["rule"] for g in opt.param_groups] == ["muon", "adamw", "muon", "sgd"]
    assert [part.rule_name for part in opt.parts] == ["muon", "adamw", "sgd"]
    everything = [*params, extra]
    for p in everything:
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    opt.step()
    assert calls == [1]
    twins, twin_opt = copy.deepcopy((everything, opt))
    for p, q in zip(everything, twins):
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        q.grad = p.grad.clone()
    opt.step()
    twin_opt.step()
    assert all(torch.equal(p, q) for p, q in zip(everything, twins))
    assert [g["params"] for g in opt.state_dict()["param_groups"]] == [[0], [1], [2], [3]]


def test_matrix_plan_without_an_array_module_is_refused_by_name(monkeypatch):
    """A built-in matrix rule whose plan kind has no array template gets no generated/torch|jax module
    (codegen/render.py: has_array_module); both backends then refuse it naming the rule and the backend."""
    from symopt.generated import jax as generated_jax
    from symopt.generated import torch as generated_torch

    for index in (generated_torch, generated_jax):
        monkeypatch.setattr(index, "RULES", {k: v for k, v in index.RULES.items() if k != "muon"})
    with pytest.raises(ValueError, match="rule 'muon' has no torch module"):
        symopt.torch.Optimizer("muon", [torch.zeros(4, 4, requires_grad=True)], backend="torch")
    transform = pytest.importorskip("symopt.jax").transform
    with pytest.raises(ValueError, match="rule 'muon' has no jax module"):
        transform("muon")
