"""Optax-defined rules equal Optax 0.2.8's trajectories (float64, 100 steps).

Each case runs the same closed-loop problem twice -- once with symopt, once with
the Optax transformation in float64 JAX -- where the gradient at every step is
computed from that run's own parameters:

    g_t = h ⊙ (θ_{t-1} − θ*) + n_t      (h > 0 fixed curvatures, n_t fixed noise)

so any difference would feed back into later steps.  The cases are the Optax cases of
``tests/rule_db.py`` for Optax's rules; each runs from a seed drawn from its id.  After
every step the params are compared elementwise (``conftest.rel_err``; params stay away
from 0); the state (Optax's ``mu``/``nu``) and the displacement θ_t − θ_0 (which shows
differences the params' own rounding hides) by max-norm relative error.  Tolerances: the
table's "peer" and "peer displacement" ones, 1e-9 in float64 for all of them.
"""
import types
import zlib

import numpy as np
import pytest
from conftest import rel_err
from rule_db import PEER_SHAPES, PEER_STEPS, case_id, peer_cases, peer_grads, peer_problem

import symopt

#: (rule info, case index, case) of the table's Optax cases of Optax-defined rules.  Cases passing
#: only ``lr`` run both libraries with their own defaults (Optax's learning rate has none).
CASES = peer_cases("optax", group="optax")


@pytest.fixture(scope="module")
def jx():
    """(optax, jax, jax.numpy) with float64 enabled.  Skipped inside the test (not at
    import) so that ``make test``'s SYMOPT_REQUIRE_REFERENCES=1 turns a missing
    Optax into a failure."""
    optax = pytest.importorskip("optax")
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    return optax, jax, jnp


def _optax_state_moments(jax, state):
    """(mu, nu) leaves of the first Optax state that has them (nu is None for Lion)."""
    for s in jax.tree_util.tree_leaves(state, is_leaf=lambda x: hasattr(x, "mu")):
        if hasattr(s, "mu"):
            return s.mu, getattr(s, "nu", None)
    raise AssertionError("no mu in the Optax state")


@pytest.mark.parametrize("info,k,case", CASES, ids=[case_id(i.name, c) for i, _, c in CASES])
def test_trajectory_equals_optax_f64(info, k, case, jx):
    optax, jax, jnp = jx
    name, kw = info.name, case.kwargs
    theta0, target, curv, noise = peer_problem(zlib.crc32(case_id(name, case).encode()) % 1000)

    ours = [p.copy() for p in theta0]
    opt = symopt.optimizer(name, ours, **kw)

    tx = case.build(types.SimpleNamespace(optax=optax, jnp=jnp))
    theirs = [jnp.asarray(p) for p in theta0]
    tx_state = tx.init(theirs)

    @jax.jit
    def optax_step(params, state, noise_t):
        grads = peer_grads(params, target, curv, noise_t)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    worst = {"params": 0.0, "displacement": 0.0, "mu": 0.0, "nu": 0.0}
    for step in range(PEER_STEPS):
        opt.step(peer_grads(ours, target, curv, noise[step]))
        theirs, tx_state = optax_step(theirs, tx_state, noise[step])
        mu, nu = _optax_state_moments(jax, tx_state)
        for j in range(len(PEER_SHAPES)):
            assert theirs[j].dtype == jnp.float64
            worst["params"] = max(worst["params"], rel_err(ours[j], theirs[j]))
            worst["displacement"] = max(worst["displacement"],
                                        rel_err(ours[j] - theta0[j], np.asarray(theirs[j]) - theta0[j], floor=1.0))
            worst["mu"] = max(worst["mu"], rel_err(opt.state[j]["mu"], mu[j], floor=1.0))
            if nu is not None:
                worst["nu"] = max(worst["nu"], rel_err(opt.state[j]["nu"], nu[j], floor=1.0))
    print(f"{name} {kw}: max relative error {worst}")
    tol = info.tolerance
    assert max(worst["params"], worst["mu"], worst["nu"]) <= tol["peer"][np.float64], worst
    assert worst["displacement"] <= tol["peer displacement"][np.float64], worst
    # The run moved the params well beyond rounding: the comparison is not vacuous.
    assert max(float(np.max(np.abs(p - p0))) for p, p0 in zip(ours, theta0)) > 1e-3
