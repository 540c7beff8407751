"""torch.optim parity: every torch-compatible rule's trajectory equals torch 2.13's.

Table-driven over the torch.optim cases of ``tests/rule_db.py`` (every variant, every
option at a non-default value, a param-group case and a mid-run hyperparameter change
per family of ``symopt.rulebook.torch_compat``).  Each case runs 100 steps
on two tensors of different shapes with gradients from a fixed seed, through
``symopt.optimizer(name, ...)`` and ``torch.optim.<Class>(..., foreach=False)`` (the
single-tensor path the rules are read from), and compares the params after every
step, then the final state under torch's state names.

Errors (``conftest.rel_err``), per tensor and step, within the table's "peer" tolerance:

* float64 (torch's default dtype set to float64 for the run, so its scalar state --
  ``step``, NAdam's ``mu_product`` -- is float64 too): elementwise relative error
  ``|a − b| / |b|`` ≤ 1e-9;
* float32: max-norm relative error ``max|a − b| / max|b|`` ≤ 1e-4.  (Elementwise,
  float32 rounding of a param that passes close to zero is ~1e-3 of that param;
  the max-norm error is the meaningful one.)

``test_references_match_torch`` checks the hand-written NumPy references of
``tests/references/torch_compat.py`` against torch the same way (float64), so the
references used by ``test_reference_steps.py`` are themselves tied to torch.
"""
import contextlib
import types

import numpy as np
import pytest
from conftest import rel_err
from rule_db import RULE_DB, peer_cases

import symopt

torch = pytest.importorskip("torch")

STEPS = 100
SHAPES = [(5, 3), (4,)]
#: (rule info, case index, case) of every torch.optim case of the table.
CASES = peer_cases("torch")
#: Elementwise in float64, max-norm in float32 (see the module doc).
FLOOR = {np.float64: 0.0, np.float32: 1.0}


@contextlib.contextmanager
def torch_default_dtype(dtype):
    """torch keeps scalar state (``step``, ``mu_product``) in its default dtype: match the params'."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == np.float64 else torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _data(dtype, seed):
    rng = np.random.default_rng(seed)
    params = [(rng.uniform(0.5, 2.0, s) * rng.choice([-1.0, 1.0], s)).astype(dtype) for s in SHAPES]
    grads = [[(rng.normal(size=s) * 10.0 ** rng.uniform(-2, 0, s)).astype(dtype) for s in SHAPES]
             for _ in range(STEPS)]
    return params, grads


def _groups(tensors, group0):
    if group0 is None:
        return list(tensors)
    return [{"params": [tensors[0]], **group0}, {"params": list(tensors[1:])}]


def _err(dtype):
    return lambda a, b: rel_err(a, b, floor=FLOOR[dtype])


def run_parity(name, case, dtype, seed):
    """Step symopt and torch side by side; returns (max param error, max state error, ours, torch's)."""
    kw, group0, change = case.kwargs, case.group0, case.change
    params, grads = _data(dtype, seed)
    err = _err(dtype)
    with torch_default_dtype(dtype):
        tparams = [torch.tensor(p.copy()) for p in params]
        topt = case.build(types.SimpleNamespace(torch=torch), _groups(tparams, group0))
        ours = [p.copy() for p in params]
        opt = symopt.optimizer(name, _groups(ours, group0), **kw)
        worst = 0.0
        for k in range(STEPS):
            if change is not None and k == STEPS // 2:
                for groups in (topt.param_groups, opt.param_groups):
                    for group in groups:
                        group.update(change)
            for tp, g in zip(tparams, grads[k]):
                tp.grad = torch.from_numpy(g)
            topt.step()
            opt.step(grads[k])
            for a, tp in zip(ours, tparams):
                assert a.dtype == dtype
                worst = max(worst, err(a, tp.detach().numpy()))
        # Final state, under torch's names: the same keys, the same values.
        state_err = 0.0
        for j, tp in enumerate(tparams):
            theirs, mine = topt.state[tp], opt.state[j]
            assert set(mine) - {"step"} == set(theirs) - {"step"}, (sorted(mine), sorted(theirs))
            if "step" in theirs:
                assert mine["step"] == int(theirs["step"].item()) == STEPS
            for key, val in theirs.items():
                if key != "step":
                    tv = val.detach().numpy()
                    state_err = max(state_err, err(mine[key], np.broadcast_to(tv, mine[key].shape)))
    return worst, state_err, ours, tparams


DTYPE_CASES = [(info, k, case, dtype) for info, k, case in CASES for dtype in case.dtypes]


@pytest.mark.parametrize("info,k,case,dtype", DTYPE_CASES,
                         ids=[f"{i.name}-{k}-{np.dtype(d).name}" for i, k, _, d in DTYPE_CASES])
def test_trajectory_matches_torch(info, k, case, dtype):
    name, kw, tol = info.name, case.kwargs, info.tolerance["peer"][dtype]
    worst, state_err, ours, _ = run_parity(name, case, dtype, seed=k)
    print(f"{name} case {k} {np.dtype(dtype).name}: params {worst:.3e}, state {state_err:.3e}")
    assert all(np.all(np.isfinite(p)) for p in ours)
    assert worst <= tol, f"{name} {kw} {np.dtype(dtype).name}: param error {worst:.3e}"
    assert state_err <= tol, f"{name} {kw} {np.dtype(dtype).name}: state error {state_err:.3e}"


# References take one set of hyperparameters per call sequence: no group/change cases.
REF_CASES = [(info, k, case) for info, k, case in CASES if case.group0 is None and case.change is None]


@pytest.mark.parametrize("info,k,case", REF_CASES, ids=[f"{i.name}-{k}" for i, k, _ in REF_CASES])
def test_references_match_torch(info, k, case):
    """The NumPy reference steps (float64) follow torch's float64 trajectory too."""
    name, kw = info.name, case.kwargs
    params, grads = _data(np.float64, seed=k)
    with torch_default_dtype(np.float64):
        tparams = [torch.tensor(p.copy()) for p in params]
        topt = case.build(types.SimpleNamespace(torch=torch), tparams)
        mine = [p.copy() for p in params]
        state: dict = {}
        worst = 0.0
        for k_ in range(STEPS):
            for tp, g in zip(tparams, grads[k_]):
                tp.grad = torch.from_numpy(g)
            topt.step()
            info.reference(mine, [g.copy() for g in grads[k_]], state, k_ + 1, **kw)
            for a, tp in zip(mine, tparams):
                worst = max(worst, rel_err(a, tp.detach().numpy()))
    assert worst <= info.tolerance["peer"][np.float64], f"reference {name} {kw}: {worst:.3e}"


TORCH_RULES = {info.name: info for info in RULE_DB.values() if info.torch_optim}


def test_table_covers_every_family_variant_and_option():
    from symopt.rulebook import factored_rules, torch_compat

    # torch.optim's own rules: the torch_compat families and the factored ones taken from torch (adafactor)
    fams = {f.name: f for m in (torch_compat, factored_rules) for f in m.families() if f.source.startswith("torch")}
    assert set(fams) == set(TORCH_RULES) == {info.name for info, _, _ in CASES}
    for name, fam in fams.items():
        defaults = symopt.optimizer(name, [np.zeros(3)]).defaults
        variants = set()
        changed = set()
        for case in TORCH_RULES[name].peer_cases:
            kw, group0, change = case.kwargs, case.group0, case.change
            variants.add(symopt.optimizer(name, [np.zeros(3)], **kw).variant)
            for extra in (kw, group0 or {}, change or {}):
                changed |= {key for key, val in extra.items() if val != defaults[key]}
        assert variants == {r.name for _, r in fam.variants}, (name, variants)
        keys = set(defaults)
        assert keys - changed == set(), f"{name}: options never set to a non-default value: {keys - changed}"


def test_defaults_and_keywords_equal_torch():
    """Every torch keyword that changes the math is accepted, with torch's default."""
    import inspect

    impl_only = {"params", "foreach", "fused", "capturable", "differentiable"}
    for name, info in TORCH_RULES.items():
        sig = inspect.signature(getattr(torch.optim, info.torch_optim).__init__)
        theirs = {k: p.default for k, p in sig.parameters.items() if k not in impl_only | {"self"}}
        ours = symopt.optimizer(name, [np.zeros(3)]).defaults
        assert set(ours) == set(theirs), (name, sorted(ours), sorted(theirs))
        for key, default in theirs.items():
            assert ours[key] == (tuple(default) if isinstance(default, tuple) else default), (name, key)


@pytest.mark.parametrize("name,kw,match", [
    ("sgd", dict(lr=-0.1), "lr"),
    ("sgd", dict(momentum=-0.5), "momentum"),
    ("sgd", dict(nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    ("sgd", dict(nesterov=True, momentum=0.9, dampening=0.1), "Nesterov momentum requires"),
    ("adam", dict(betas=(1.0, 0.999)), "betas"),
    ("adam", dict(eps=-1e-8), "eps"),
    ("adamw", dict(weight_decay=-0.1), "weight_decay"),
    ("adagrad", dict(lr_decay=-1.0), "lr_decay"),
    ("adagrad", dict(initial_accumulator_value=-1.0), "initial_accumulator_value"),
    ("rmsprop", dict(alpha=-0.1), "alpha"),
    ("nadam", dict(momentum_decay=-1.0), "momentum_decay"),
    ("adadelta", dict(rho=1.5), "rho"),
])
def test_invalid_values_raise_like_torch(name, kw, match):
    with pytest.raises(ValueError, match=match):
        symopt.optimizer(name, [np.zeros(3)], **kw)
    with pytest.raises(ValueError):
        getattr(torch.optim, RULE_DB[name].torch_optim)([torch.zeros(3, requires_grad=True)], **kw)


def test_structural_option_cannot_change_mid_run():
    """amsgrad/centered/momentum != 0 select kernels: changing them later is refused, nothing changes."""
    p = [np.ones(3)]
    opt = symopt.optimizer("rmsprop", p, lr=0.1)
    opt.step([np.ones(3)])
    before = p[0].copy()
    opt.param_groups[0]["centered"] = True
    with pytest.raises(ValueError, match="variant"):
        opt.step([np.ones(3)])
    np.testing.assert_array_equal(p[0], before)
