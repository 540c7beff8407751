"""torch.optim parity: every torch-compatible rule's trajectory equals torch 2.13's.

Table-driven over every family of ``symopt.rulebook.torch_compat`` and a list of
keyword combinations each (every variant, every option at a non-default value,
a param-group case and a mid-run hyperparameter change).  Each case runs 100 steps
on two tensors of different shapes with gradients from a fixed seed, through
``symopt.optimizer(name, ...)`` and ``torch.optim.<Class>(..., foreach=False)`` (the
single-tensor path the rules are read from), and compares the params after every
step, then the final state under torch's state names.

Errors, per tensor and step:

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

import numpy as np
import pytest

import symopt
from references import torch_compat as ref

torch = pytest.importorskip("torch")

STEPS = 100
SHAPES = [(5, 3), (4,)]
TOL = {np.float64: 1e-9, np.float32: 1e-4}

TORCH_CLASS = {
    "sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "adagrad": "Adagrad", "rmsprop": "RMSprop",
    "adamax": "Adamax", "nadam": "NAdam", "radam": "RAdam", "adadelta": "Adadelta",
}

# Each case: keyword arguments of both optimizers, plus optional
#   "_group0": extra keys of a first param group holding the first tensor (the second
#              tensor is in a second group with the defaults), and
#   "_change": {key: value} set on every param group before step STEPS // 2 + 1.
CASES = {
    "sgd": [
        dict(),
        dict(lr=0.05),
        dict(lr=0.05, weight_decay=0.1),
        dict(lr=0.05, maximize=True),
        dict(lr=0.05, momentum=0.9),
        dict(lr=0.05, momentum=0.9, dampening=0.3),
        dict(lr=0.05, momentum=0.9, nesterov=True),
        dict(lr=0.05, momentum=0.5, dampening=0.1, weight_decay=0.01, maximize=True),
        dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True),
        dict(lr=0.05, momentum=0.9, _change=dict(lr=0.01, momentum=0.5, dampening=0.5)),
    ],
    "adam": [
        dict(),
        dict(lr=0.01, betas=(0.8, 0.99)),
        dict(lr=0.01, amsgrad=True),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, maximize=True, eps=1e-6),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True, maximize=True),
        dict(lr=0.01, weight_decay=0.1, amsgrad=True, _group0=dict(lr=0.03, betas=(0.5, 0.9))),
    ],
    "adamw": [
        dict(),
        dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1),
        dict(lr=0.01, amsgrad=True),
        dict(lr=0.01, weight_decay=0.0, maximize=True, eps=1e-6),
        dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True),
    ],
    "adagrad": [
        dict(),
        dict(lr=0.1, lr_decay=0.01),
        dict(lr=0.1, initial_accumulator_value=0.5),
        dict(lr=0.1, weight_decay=0.1, maximize=True, eps=1e-6),
        dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.1, weight_decay=0.01, maximize=True,
             _change=dict(lr_decay=0.0)),
    ],
    "rmsprop": [
        dict(),
        dict(lr=0.01, centered=True),
        dict(lr=0.003, momentum=0.9),
        dict(lr=0.003, centered=True, momentum=0.9),
        dict(lr=0.01, alpha=0.9, weight_decay=0.1, maximize=True, eps=1e-6),
        dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.1, maximize=True),
    ],
    "adamax": [
        dict(),
        dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
        dict(lr=0.01, weight_decay=0.1, maximize=True),
    ],
    "nadam": [
        dict(),
        dict(lr=0.01, momentum_decay=0.01, betas=(0.8, 0.99)),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        dict(lr=0.01, maximize=True, eps=1e-6),
        # mu_product is history: changing momentum_decay mid-run keeps the old factors
        dict(lr=0.01, _change=dict(momentum_decay=0.02, betas=(0.8, 0.999))),
    ],
    "radam": [
        dict(),
        dict(lr=0.01, betas=(0.9, 0.99)),
        dict(lr=0.01, betas=(0.9, 0.6)),       # ρ∞ ≈ 4: never rectified, no division by ρ∞ − 4
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True, eps=1e-6),
    ],
    "adadelta": [
        dict(),
        dict(lr=0.5, rho=0.95),
        dict(lr=0.5, weight_decay=0.1, maximize=True, eps=1e-4),
        dict(rho=1.0),                          # ρ = 1 is valid in torch: the averages never move
    ],
}
TABLE = [(name, k, kw) for name, cases in CASES.items() for k, kw in enumerate(cases)]
IDS = [f"{name}-{k}" for name, k, _ in TABLE]


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


def _split(kw):
    kw = dict(kw)
    return kw, kw.pop("_group0", None), kw.pop("_change", None)


def _groups(tensors, group0):
    if group0 is None:
        return list(tensors)
    return [{"params": [tensors[0]], **group0}, {"params": list(tensors[1:])}]


def _elementwise(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), np.finfo(np.float64).tiny)))


def _maxnorm(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(b)))
    diff = float(np.max(np.abs(a - b)))
    return diff / scale if scale > 0 else diff


ERROR = {np.float64: _elementwise, np.float32: _maxnorm}


def run_parity(name, kw, dtype, seed):
    """Step symopt and torch side by side; returns (max param error, max state error, ours, torch's)."""
    kw, group0, change = _split(kw)
    params, grads = _data(dtype, seed)
    err = ERROR[dtype]
    with torch_default_dtype(dtype):
        tparams = [torch.tensor(p.copy()) for p in params]
        topt = getattr(torch.optim, TORCH_CLASS[name])(_groups(tparams, group0), foreach=False, **kw)
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


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,k,kw", TABLE, ids=IDS)
def test_trajectory_matches_torch(name, k, kw, dtype):
    worst, state_err, ours, _ = run_parity(name, kw, dtype, seed=k)
    print(f"{name} case {k} {np.dtype(dtype).name}: params {worst:.3e}, state {state_err:.3e}")
    assert all(np.all(np.isfinite(p)) for p in ours)
    assert worst <= TOL[dtype], f"{name} {kw} {np.dtype(dtype).name}: param error {worst:.3e}"
    assert state_err <= TOL[dtype], f"{name} {kw} {np.dtype(dtype).name}: state error {state_err:.3e}"


# References take one set of hyperparameters per call sequence: no group/change cases.
REF_TABLE = [(name, k, kw) for name, k, kw in TABLE if not {"_group0", "_change"} & set(kw)]


@pytest.mark.parametrize("name,k,kw", REF_TABLE, ids=[f"{n}-{k}" for n, k, _ in REF_TABLE])
def test_references_match_torch(name, k, kw):
    """The NumPy reference steps (float64) follow torch's float64 trajectory too."""
    params, grads = _data(np.float64, seed=k)
    with torch_default_dtype(np.float64):
        tparams = [torch.tensor(p.copy()) for p in params]
        topt = getattr(torch.optim, TORCH_CLASS[name])(tparams, foreach=False, **kw)
        mine = [p.copy() for p in params]
        state: dict = {}
        worst = 0.0
        for k_ in range(STEPS):
            for tp, g in zip(tparams, grads[k_]):
                tp.grad = torch.from_numpy(g)
            topt.step()
            ref.REFERENCES[name](mine, [g.copy() for g in grads[k_]], state, k_ + 1, **kw)
            for a, tp in zip(mine, tparams):
                worst = max(worst, _elementwise(a, tp.detach().numpy()))
    assert worst <= TOL[np.float64], f"reference {name} {kw}: {worst:.3e}"


def _torch_families():
    from symopt.rulebook.torch_compat import families

    return {f.name: f for f in families()}


def test_table_covers_every_family_variant_and_option():
    fams = _torch_families()
    assert set(fams) == set(CASES) == set(TORCH_CLASS) == set(ref.REFERENCES)
    for name, fam in fams.items():
        defaults = symopt.optimizer(name, [np.zeros(3)]).defaults
        variants = set()
        changed = set()
        for kw in CASES[name]:
            kw, group0, change = _split(kw)
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
    for name, cls in TORCH_CLASS.items():
        sig = inspect.signature(getattr(torch.optim, cls).__init__)
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
        getattr(torch.optim, TORCH_CLASS[name])([torch.zeros(3, requires_grad=True)], **kw)


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
