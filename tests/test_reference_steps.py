"""Every built-in rule against its hand-written NumPy reference step, table-driven.

The table is built from ``symopt.rules()`` and every module of ``tests/references``
(each exposes ``REFERENCES = {name: fn}`` and optionally ``CASES = {name: [kwargs]}``;
see ``tests/references/__init__.py``).  Each rule runs its defaults and each extra
case, in float64 and float32, for ``STEPS`` steps with fixed random gradients
(magnitudes 1e-2..1) on two small tensors.  The reference always runs in float64,
from the same (dtype-rounded) starting values and gradients.

Errors are max-norm relative errors per tensor (``max|a − b| / max|b|``) of the
params, of the displacement θ_t − θ_0 (small beside θ, so it exposes a wrong
constant the params' own rounding would hide) and of every state buffer the
reference keeps under the rule's ``state_dict`` key.  Tolerances:

* float64: ``STEPS · 1e-12`` = 2e-11 on all three -- rounding differences of ~1e-16
  per operation, accumulated over the steps, with a wide margin;
* float32: 1e-4 on params and state (float32 rounding, ~1e-7 per operation, over
  20 steps); the displacement is not compared in float32 (the params' float32
  rounding, 2^-24·|θ| per step, is ~1e-5 of a displacement of ~0.1).

``test_every_builtin_rule_has_a_reference`` keeps the table complete: a new
built-in rule cannot land without a reference (or an entry in ``ALLOWED_MISSING``
with the reason).
"""
import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import references
import symopt

STEPS = 20
SHAPES = [(3, 4), (5,)]
TOL = {np.float64: STEPS * 1e-12, np.float32: 1e-4}

#: Built-in rules allowed to have no reference step: {name: reason}.  Keep it empty.
ALLOWED_MISSING: dict = {}


def _load_references():
    refs, cases, origin = {}, {}, {}
    for info in sorted(pkgutil.iter_modules(references.__path__), key=lambda i: i.name):
        mod = importlib.import_module(f"references.{info.name}")
        for name, fn in getattr(mod, "REFERENCES", {}).items():
            if name in refs:
                raise RuntimeError(f"rule {name!r} has references in both {origin[name]} and {info.name}")
            refs[name], origin[name] = fn, info.name
        for name, extra in getattr(mod, "CASES", {}).items():
            cases.setdefault(name, []).extend(extra)
    return refs, cases


REFS, CASES = _load_references()
BUILTIN = symopt.rules()
TABLE = [(name, k, kw) for name in BUILTIN if name in REFS
         for k, kw in enumerate([{}] + CASES.get(name, []))]


def _data(seed, dtype):
    rng = np.random.default_rng(seed)
    params = [(rng.uniform(2.0, 3.0, s) * rng.choice([-1.0, 1.0], s)).astype(dtype) for s in SHAPES]
    grads = [[(rng.normal(size=s) * 10.0 ** rng.uniform(-2, 0, s)).astype(dtype) for s in SHAPES]
             for _ in range(STEPS)]
    return params, grads


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    diff = float(np.max(np.abs(a - b))) if b.size else 0.0
    return diff / scale if scale > 0 else diff


def compare(name, kw, dtype, seed=0):
    """Max relative errors {"params", "displacement", "state"} of symopt against the reference."""
    params, grads = _data(seed, dtype)
    ours = [p.copy() for p in params]
    opt = symopt.optimizer(name, ours, **kw)
    hyper = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    start = [p.astype(np.float64) for p in params]
    theirs = [p.copy() for p in start]
    state: dict = {}
    err = {"params": 0.0, "displacement": 0.0, "state": 0.0}
    compared_state = set()
    for t in range(1, STEPS + 1):
        opt.step(grads[t - 1])
        REFS[name](theirs, [g.astype(np.float64) for g in grads[t - 1]], state, t, **hyper)
        ostate = opt.state
        for j in range(len(SHAPES)):
            assert ours[j].dtype == dtype
            err["params"] = max(err["params"], _rel(ours[j], theirs[j]))
            err["displacement"] = max(err["displacement"], _rel(ours[j] - start[j], theirs[j] - start[j]))
            for key, bufs in state.items():
                if key in ostate[j] and isinstance(bufs, list) and len(bufs) == len(SHAPES):
                    err["state"] = max(err["state"], _rel(ostate[j][key], bufs[j]))
                    compared_state.add(key)
    assert all(np.all(np.isfinite(p)) for p in ours)
    moved = max(_rel(p - s, np.ones(1)) for p, s in zip(theirs, start))
    assert moved > 1e-4, f"{name} {kw}: the reference barely moved the params ({moved})"
    return err, compared_state


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,k,kw", TABLE, ids=[f"{n}-case{k}" for n, k, _ in TABLE])
def test_rule_matches_reference_step(name, k, kw, dtype):
    err, compared = compare(name, kw, dtype, seed=k)
    print(f"{name} case{k} {np.dtype(dtype).name}: {err} (state compared: {sorted(compared)})")
    tol = TOL[dtype]
    assert err["params"] <= tol and err["state"] <= tol, err
    if dtype is np.float64:
        assert err["displacement"] <= tol, err


def test_every_builtin_rule_has_a_reference():
    missing = [n for n in BUILTIN if n not in REFS and n not in ALLOWED_MISSING]
    assert not missing, f"built-in rules without a reference step in tests/references: {missing}"
    stale = [n for n in ALLOWED_MISSING if n in REFS or n not in BUILTIN]
    assert not stale, f"ALLOWED_MISSING lists rules that have a reference or do not exist: {stale}"
    unknown = [n for n in REFS if n not in BUILTIN]
    assert not unknown, f"references for rules that are not built in: {unknown}"


@pytest.mark.parametrize("name", [n for n in BUILTIN if n in REFS])
def test_reference_defaults_equal_rule_defaults(name):
    """Keyword defaults written in a reference (from its source) equal the rule's defaults."""
    defaults = symopt.optimizer(name, [np.zeros(2)]).defaults
    params = inspect.signature(REFS[name]).parameters
    for key, p in params.items():
        if p.default is inspect.Parameter.empty or key not in defaults:
            continue
        expected = tuple(p.default) if isinstance(p.default, (tuple, list)) else p.default
        assert defaults[key] == expected, f"{name}: default {key}={defaults[key]!r}, reference says {expected!r}"
    unknown = [k for k in defaults if k not in params and not any(
        q.kind is inspect.Parameter.VAR_KEYWORD for q in params.values())]
    assert not unknown, f"{name}: the reference takes no keyword {unknown}"
