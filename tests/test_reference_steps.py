"""Every built-in rule against its hand-written NumPy reference step, table-driven.

Table-driven over ``tests/rule_db.py``: each rule's reference step (``tests/references``,
calling convention in ``tests/references/__init__.py``) runs the rule's defaults and each
of the record's reference cases, in float64 and float32, for ``STEPS`` steps with fixed
random gradients (magnitudes 1e-2..1) on two small tensors.  The reference always runs in float64,
from the same (dtype-rounded) starting values and gradients.

Errors are max-norm relative errors per tensor (``conftest.rel_err`` with ``floor=1``:
``max|a − b| / max|b|``) of the params, of the displacement θ_t − θ_0 (small beside θ,
so it exposes a wrong constant the params' own rounding would hide) and of every state
buffer the reference keeps under the rule's ``state_dict`` key.  Tolerances (the table's
"reference" and "reference displacement"):

* float64: ``STEPS · 1e-12`` = 2e-11 on all three -- rounding differences of ~1e-16
  per operation, accumulated over the steps, with a wide margin;
* float32: 1e-4 on params and state (float32 rounding, ~1e-7 per operation, over
  20 steps); the displacement is not compared in float32 (the params' float32
  rounding, 2^-24·|θ| per step, is ~1e-5 of a displacement of ~0.1).
"""
import inspect

import numpy as np
import pytest
from conftest import rel_err
from rule_db import RULE_DB

import symopt

STEPS = 20
SHAPES = [(3, 4), (5,)]
#: (rule info, case index, keywords): the defaults (case 0) and each of the table's reference cases.
CASES = [(info, k, kw) for info in RULE_DB.values() if info.reference is not None
         for k, kw in enumerate(({},) + info.reference_cases)]


def _data(seed, dtype):
    rng = np.random.default_rng(seed)
    params = [(rng.uniform(2.0, 3.0, s) * rng.choice([-1.0, 1.0], s)).astype(dtype) for s in SHAPES]
    grads = [[(rng.normal(size=s) * 10.0 ** rng.uniform(-2, 0, s)).astype(dtype) for s in SHAPES]
             for _ in range(STEPS)]
    return params, grads


def compare(info, kw, dtype, seed=0):
    """Max relative errors {"params", "displacement", "state"} of symopt against the reference."""
    name = info.name
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
        info.reference(theirs, [g.astype(np.float64) for g in grads[t - 1]], state, t, **hyper)
        ostate = opt.state
        for j in range(len(SHAPES)):
            assert ours[j].dtype == dtype
            err["params"] = max(err["params"], rel_err(ours[j], theirs[j], floor=1.0))
            err["displacement"] = max(err["displacement"],
                                      rel_err(ours[j] - start[j], theirs[j] - start[j], floor=1.0))
            for key, bufs in state.items():
                if key in ostate[j] and isinstance(bufs, list) and len(bufs) == len(SHAPES):
                    err["state"] = max(err["state"], rel_err(ostate[j][key], bufs[j], floor=1.0))
                    compared_state.add(key)
    assert all(np.all(np.isfinite(p)) for p in ours)
    moved = max(float(np.max(np.abs(p - s))) for p, s in zip(theirs, start))
    assert moved > 1e-4, f"{name} {kw}: the reference barely moved the params ({moved})"
    return err, compared_state


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("info,k,kw", CASES, ids=[f"{i.name}-case{k}" for i, k, _ in CASES])
def test_rule_matches_reference_step(info, k, kw, dtype):
    err, compared = compare(info, kw, dtype, seed=k)
    print(f"{info.name} case{k} {np.dtype(dtype).name}: {err} (state compared: {sorted(compared)})")
    tol = info.tolerance["reference"][dtype]
    assert err["params"] <= tol and err["state"] <= tol, err
    if dtype in info.tolerance["reference displacement"]:
        assert err["displacement"] <= info.tolerance["reference displacement"][dtype], err


@pytest.mark.parametrize("info", [i for i in RULE_DB.values() if i.reference is not None], ids=lambda i: i.name)
def test_reference_defaults_equal_rule_defaults(info):
    """Keyword defaults written in a reference (from its source) equal the rule's defaults."""
    name = info.name
    defaults = symopt.optimizer(name, [np.zeros(2)]).defaults
    params = inspect.signature(info.reference).parameters
    for key, p in params.items():
        if p.default is inspect.Parameter.empty or key not in defaults:
            continue
        expected = tuple(p.default) if isinstance(p.default, (tuple, list)) else p.default
        assert defaults[key] == expected, f"{name}: default {key}={defaults[key]!r}, reference says {expected!r}"
    unknown = [k for k in defaults if k not in params and not any(
        q.kind is inspect.Parameter.VAR_KEYWORD for q in params.values())]
    assert not unknown, f"{name}: the reference takes no keyword {unknown}"
