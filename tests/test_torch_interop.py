"""Checkpoints move between torch.optim and symopt.torch.Optimizer and continue the same trajectory.

For every torch-compatible rule and option set (table ``CASES``), in float64 with
torch's default dtype set to float64 (torch keeps ``step`` and NAdam's
``mu_product`` in the default dtype):

* torch -> symopt: ``torch.optim.<Class>`` runs 10 steps; its ``state_dict()`` is
  loaded into ``symopt.torch.Optimizer(rule)`` (built with the rule's *defaults*:
  the dict carries the hyperparameters and selects the variant) over a copy of the
  params; both continue 100 steps;
* symopt -> torch: the same the other way round.

The problem is closed-loop, so any difference feeds back: at step t every run
computes its own gradient g_t = h ⊙ (θ_{t-1} − θ*) + n_t (fixed curvatures h > 0,
fixed noise n_t).  After every step the params are compared, and at the end the
state by torch's names; tolerance: relative (max-norm) 1e-9 in float64.  The
layouts of the two state dicts (entry keys, dtypes, shapes, group keys) must be
equal.
"""
import copy
import io

import numpy as np
import pytest
from conftest import rel_err

torch = pytest.importorskip("torch")

import symopt  # noqa: E402
from symopt.torch import TORCH_FORMATS, Optimizer  # noqa: E402
from symopt.torch.interop import IMPLEMENTATION_KEYS  # noqa: E402

RTOL_F64 = 1e-9
WARM, STEPS = 10, 100
SHAPES = [(3, 4), (5,)]

#: (symopt rule, torch.optim class, keyword arguments) -- every variant and option.
CASES = [
    ("sgd", "SGD", dict(lr=0.05)),
    ("sgd", "SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("sgd", "SGD", dict(lr=0.02, momentum=0.9, nesterov=True, maximize=True)),
    ("adam", "Adam", dict(lr=1e-2)),
    ("adam", "Adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.01)),
    ("adam", "Adam", dict(lr=1e-2, betas=(0.8, 0.99), decoupled_weight_decay=True, weight_decay=0.1,
                          maximize=True)),
    ("adamw", "AdamW", dict(lr=1e-2)),
    ("adamw", "AdamW", dict(lr=1e-2, amsgrad=True, eps=1e-6)),
    ("adagrad", "Adagrad", dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.01)),
    ("rmsprop", "RMSprop", dict(lr=1e-2)),
    ("rmsprop", "RMSprop", dict(lr=1e-2, centered=True)),
    ("rmsprop", "RMSprop", dict(lr=1e-2, momentum=0.5, maximize=True)),
    ("rmsprop", "RMSprop", dict(lr=1e-2, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.01)),
    ("adamax", "Adamax", dict(lr=1e-2, weight_decay=0.01)),
    ("nadam", "NAdam", dict(lr=1e-2)),
    ("nadam", "NAdam", dict(lr=1e-2, momentum_decay=0.01, decoupled_weight_decay=True, weight_decay=0.1)),
    ("radam", "RAdam", dict(lr=1e-2)),
    ("radam", "RAdam", dict(lr=1e-2, decoupled_weight_decay=True, weight_decay=0.1, maximize=True)),
    ("adadelta", "Adadelta", dict(lr=1.0, rho=0.95, weight_decay=0.01)),
]


def _id(case):
    return f"{case[0]}-" + "-".join(f"{k}={v}" for k, v in case[2].items())


@pytest.fixture(autouse=True)
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class Problem:
    """g_t = h ⊙ (θ_{t-1} − θ*) + n_t, the same for every run (seeded)."""

    def __init__(self, dtype=torch.float64, seed=7):
        rng = np.random.default_rng(seed)
        self.dtype = dtype
        self.theta0 = [torch.tensor(rng.uniform(1.0, 2.0, s) * rng.choice([-1, 1], s), dtype=dtype) for s in SHAPES]
        self.target = [torch.tensor(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
        self.h = [torch.tensor(rng.uniform(0.5, 2.0, s), dtype=dtype) for s in SHAPES]
        self.noise = [[torch.tensor(0.1 * rng.standard_normal(s), dtype=dtype) for s in SHAPES]
                      for _ in range(WARM + STEPS + 1)]

    def params(self):
        return [p.clone().requires_grad_(True) for p in self.theta0]

    def set_grads(self, params, t):
        for p, h, c, n in zip(params, self.h, self.target, self.noise[t]):
            p.grad = h * (p.detach() - c) + n


def _run(opt, params, problem, steps, t0):
    out = []
    for t in range(t0, t0 + steps):
        problem.set_grads(params, t)
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out


def _layout(sd):
    state = {i: {k: (None if v is None else (v.dtype, tuple(v.shape))) for k, v in e.items()}
             for i, e in sd["state"].items()}
    groups = [sorted(k for k in g if k != "params") for g in sd["param_groups"]]
    return state, groups


def _compare_trajectories(a, b, what):
    worst = 0.0
    for t, (pa, pb) in enumerate(zip(a, b)):
        for k, (x, y) in enumerate(zip(pa, pb)):
            e = rel_err(x, y, floor=1.0)
            worst = max(worst, e)
            assert e <= RTOL_F64, f"{what}: step {t + 1}, param {k}: relative error {e:.3g}"
    return worst


def _compare_states(sd_a, sd_b, what):
    assert sd_a["state"].keys() == sd_b["state"].keys(), what
    for i in sd_a["state"]:
        for key, v in sd_a["state"][i].items():
            e = rel_err(v, sd_b["state"][i][key], floor=1.0)
            assert e <= RTOL_F64, f"{what}: state {key!r} of param {i}: relative error {e:.3g}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_torch_checkpoint_resumes_in_symopt(case):
    rule, cls_name, kw = case
    problem = Problem()
    pa = problem.params()
    ta = getattr(torch.optim, cls_name)(pa, foreach=False, **kw)
    _run(ta, pa, problem, WARM, 0)
    sd = ta.state_dict()
    saved = copy.deepcopy(sd)

    pb = [p.detach().clone().requires_grad_(True) for p in pa]
    sb = Optimizer(rule, pb)                    # defaults: the checkpoint carries every hyperparameter
    sb.load_state_dict(sd)
    _assert_dict_equal(sd, saved)               # loading does not mutate the dict
    assert _layout(sb.state_dict()) == _layout(sd)

    traj_torch = _run(ta, pa, problem, STEPS, WARM)
    traj_symopt = _run(sb, pb, problem, STEPS, WARM)
    _compare_trajectories(traj_symopt, traj_torch, f"{rule} {kw} torch->symopt")
    _compare_states(sb.state_dict(), ta.state_dict(), f"{rule} {kw} torch->symopt")


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_symopt_checkpoint_resumes_in_torch(case):
    rule, cls_name, kw = case
    problem = Problem()
    pa = problem.params()
    sa = Optimizer(rule, pa, **kw)
    _run(sa, pa, problem, WARM, 0)
    sd = sa.state_dict()

    # the same 10 steps in torch give the same layout
    pr = problem.params()
    ref = getattr(torch.optim, cls_name)(pr, foreach=False, **kw)
    _run(ref, pr, problem, WARM, 0)
    assert _layout(sd) == _layout(ref.state_dict())

    pb = [p.detach().clone().requires_grad_(True) for p in pa]
    tb = getattr(torch.optim, cls_name)(pb, foreach=False)
    tb.load_state_dict(copy.deepcopy(sd))
    traj_symopt = _run(sa, pa, problem, STEPS, WARM)
    traj_torch = _run(tb, pb, problem, STEPS, WARM)
    _compare_trajectories(traj_symopt, traj_torch, f"{rule} {kw} symopt->torch")
    _compare_states(sa.state_dict(), tb.state_dict(), f"{rule} {kw} symopt->torch")


def _assert_dict_equal(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_dict_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_dict_equal(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    else:
        assert a == b


def test_table_covers_every_torch_compatible_rule():
    """Every built-in rule of the torch group has a format entry whose keys are torch's (matrix rules
    with a torch.optim class too: adafactor)."""
    from symopt.runtime import kernels

    torch_rules = [n for n in symopt.rules() if kernels.load(n).FAMILY["group"] == "torch"]
    matrix_rules = [n for n in TORCH_FORMATS if kernels.load(n).FAMILY["group"] == "matrix"]
    assert "adafactor" in matrix_rules
    assert sorted(torch_rules + matrix_rules) == sorted(TORCH_FORMATS)
    for name, fmt in TORCH_FORMATS.items():
        keys = set(symopt.optimizer(name, [np.zeros(1)]).defaults)
        torch_keys = set(fmt.torch_defaults())
        assert keys <= torch_keys, name
        assert torch_keys - keys - IMPLEMENTATION_KEYS == set(fmt.implied(keys)), name
    assert TORCH_FORMATS["adamw"].implied({"lr"})["decoupled_weight_decay"] is True


def test_adamw_checkpoint_resumes_in_symopt_adam_with_decoupled_weight_decay():
    """torch's AdamW is Adam with decoupled_weight_decay=True; symopt's adam has that switch."""
    problem = Problem()
    pa = problem.params()
    ta = torch.optim.AdamW(pa, lr=1e-2, weight_decay=0.1)
    _run(ta, pa, problem, WARM, 0)
    pb = [p.detach().clone().requires_grad_(True) for p in pa]
    sb = Optimizer("adam", pb)
    sb.load_state_dict(ta.state_dict())
    assert sb.param_groups[0]["decoupled_weight_decay"] is True
    _compare_trajectories(_run(sb, pb, problem, STEPS, WARM), _run(ta, pa, problem, STEPS, WARM), "adamw->adam")


def test_adagrad_state_exists_before_the_first_step():
    problem = Problem()
    pa = problem.params()
    ta = torch.optim.Adagrad(pa, lr=0.05, initial_accumulator_value=0.2)
    sd = ta.state_dict()
    assert len(sd["state"]) == 2
    pb = [p.detach().clone().requires_grad_(True) for p in pa]
    sb = Optimizer("adagrad", pb, initial_accumulator_value=0.2)
    assert _layout(sb.state_dict()) == _layout(sd)
    sb.load_state_dict(sd)
    _compare_trajectories(_run(sb, pb, problem, 20, 0), _run(ta, pa, problem, 20, 0), "adagrad from step 0")


def test_float32_nadam_checkpoint_round_trip():
    """float32 params with torch's default dtype float32: step and mu_product are float32 tensors."""
    torch.set_default_dtype(torch.float32)
    problem = Problem(dtype=torch.float32)
    pa = problem.params()
    ta = torch.optim.NAdam(pa, lr=1e-2)
    _run(ta, pa, problem, WARM, 0)
    sd = ta.state_dict()
    assert sd["state"][0]["mu_product"].dtype == torch.float32
    pb = [p.detach().clone().requires_grad_(True) for p in pa]
    sb = Optimizer("nadam", pb)
    sb.load_state_dict(sd)
    assert _layout(sb.state_dict()) == _layout(sd)
    a, b = _run(sb, pb, problem, 30, WARM), _run(ta, pa, problem, 30, WARM)
    assert max(rel_err(x, y, floor=1.0) for pa_, pb_ in zip(a, b) for x, y in zip(pa_, pb_)) <= 1e-4


# ------------------------------------------------------------------ mismatches
def _torch_adam_dict(**kw):
    problem = Problem()
    pa = problem.params()
    ta = torch.optim.Adam(pa, lr=1e-2, **kw)
    _run(ta, pa, problem, 3, 0)
    return ta.state_dict(), pa


def _fresh(rule="adam", **kw):
    return Optimizer(rule, Problem().params(), **kw)


@pytest.mark.parametrize("key", ["exp_avg", "exp_avg_sq", "step"])
def test_missing_state_key_is_named(key):
    sd, _ = _torch_adam_dict()
    del sd["state"][1][key]
    opt = _fresh()
    before = opt.state_dict()
    with pytest.raises(ValueError, match=f"missing key '{key}'"):
        opt.load_state_dict(sd)
    _assert_dict_equal(opt.state_dict(), before)      # nothing changed


def test_amsgrad_checkpoint_without_max_exp_avg_sq_is_named():
    sd, _ = _torch_adam_dict(amsgrad=True)
    del sd["state"][0]["max_exp_avg_sq"]
    with pytest.raises(ValueError, match="missing key 'max_exp_avg_sq'"):
        _fresh().load_state_dict(sd)


def test_mismatched_shapes_groups_and_algorithms_fail_clearly():
    sd, _ = _torch_adam_dict()
    bad = copy.deepcopy(sd)
    bad["state"][0]["exp_avg"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="shape"):
        _fresh().load_state_dict(bad)
    bad = copy.deepcopy(sd)
    bad["param_groups"].append(copy.deepcopy(bad["param_groups"][0]))
    with pytest.raises(ValueError, match="parameter groups"):
        _fresh().load_state_dict(bad)
    bad = copy.deepcopy(sd)
    bad["param_groups"][0]["params"] = [0]
    with pytest.raises(ValueError, match="has 1 params"):
        _fresh().load_state_dict(bad)
    bad = copy.deepcopy(sd)
    bad["state"][7] = bad["state"][0]
    with pytest.raises(ValueError, match="param 7"):
        _fresh().load_state_dict(bad)
    # another algorithm's checkpoint: its hyperparameters and state names are refused by name
    problem = Problem()
    pn = problem.params()
    tn = torch.optim.NAdam(pn, lr=1e-2)
    _run(tn, pn, problem, 2, 0)
    with pytest.raises(ValueError, match="momentum_decay"):
        _fresh().load_state_dict(tn.state_dict())
    with pytest.raises(ValueError, match="decoupled_weight_decay"):
        _fresh("adamw").load_state_dict(sd)        # torch Adam (L2 decay) into AdamW
    sgd_sd = _fresh("sgd", momentum=0.9)
    with pytest.raises(ValueError, match="saved by symopt rule 'sgd'"):
        _fresh().load_state_dict(sgd_sd.state_dict())
    extra = copy.deepcopy(sd)
    extra["state"][0]["mu_product"] = torch.tensor(0.5)
    with pytest.raises(ValueError, match="mu_product"):
        _fresh().load_state_dict(extra)


def test_old_style_step_numbers_and_torch_save_round_trip():
    sd, pa = _torch_adam_dict()
    old = copy.deepcopy(sd)
    for entry in old["state"].values():
        entry["step"] = float(entry["step"])          # torch < 1.12 kept step as a number
    opt = Optimizer("adam", [p.detach().clone().requires_grad_(True) for p in pa])
    opt.load_state_dict(old)
    assert [int(opt.state[p]["step"]) for p in opt.param_groups[0]["params"]] == [3, 3]
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)        # plain tensors and numbers only
    _assert_dict_equal(loaded, opt.state_dict())      # and state_dict() is deterministic
    opt.load_state_dict(loaded)


def test_generic_format_round_trip_for_notes_and_user_rules():
    import sympy as sp

    p_, g_, m_ = sp.symbols("p g m")
    lr_, beta_ = sp.symbols("lr beta")
    heavy_ball = symopt.Rule("heavy_ball_interop", param=p_, grad=g_, state={m_: 0},
                             hyper={lr_: 1e-2, beta_: 0.9},
                             updates=[(m_, beta_ * m_ + g_), (p_, p_ - lr_ * m_)])
    for rule, kw in (("notes.adam_warmup", dict(lr=1e-2)), (heavy_ball, dict(lr=0.05))):
        problem = Problem()
        pa = problem.params()
        a = Optimizer(rule, pa, **kw)
        _run(a, pa, problem, WARM, 0)
        sd = a.state_dict()
        assert all(isinstance(e["step"], torch.Tensor) and e["step"].dtype == torch.float64
                   for e in sd["state"].values())
        pb = [p.detach().clone().requires_grad_(True) for p in pa]
        b = Optimizer(rule, pb)
        b.load_state_dict(sd)
        ta, tb = _run(a, pa, problem, 20, WARM), _run(b, pb, problem, 20, WARM)
        for x, y in zip(ta, tb):
            assert all(torch.equal(u, v) for u, v in zip(x, y))   # the same kernel: bit for bit


def test_state_dict_hooks_run():
    calls = []
    opt = _fresh()
    opt.register_state_dict_pre_hook(lambda o: calls.append("pre"))
    opt.register_state_dict_post_hook(lambda o, sd: (calls.append("post"), sd.setdefault("note", 1))[1] and None)
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load-pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load-post"))
    sd = opt.state_dict()
    assert sd["note"] == 1
    opt.load_state_dict(sd)
    assert calls == ["pre", "post", "load-pre", "load-post"]


def test_distributed_checkpoint_state_dict_api():
    """torch.distributed.checkpoint's get/set_optimizer_state_dict (keys by parameter name) work."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))

    ma, mb = model(), model()
    oa, ob = Optimizer("adam", ma.parameters(), lr=0.1), Optimizer("adam", mb.parameters())
    ma(torch.ones(2, 3)).sum().backward()
    oa.step()
    sd = get_optimizer_state_dict(ma, oa)
    assert "0.weight" in sd["state"]
    set_optimizer_state_dict(mb, ob, sd)
    assert ob.param_groups[0]["lr"] == 0.1
    for pa, pb in zip(ma.parameters(), mb.parameters()):
        assert torch.equal(oa.state[pa]["exp_avg"], ob.state[pb]["exp_avg"])
        assert int(ob.state[pb]["step"]) == 1
