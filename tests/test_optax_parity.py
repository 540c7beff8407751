"""Optax-defined rules equal Optax 0.2.8's trajectories (float64, 100 steps).

Each case runs the same closed-loop problem twice -- once with symopt, once with
the Optax transformation in float64 JAX -- where the gradient at every step is
computed from that run's own parameters:

    g_t = h ⊙ (θ_{t-1} − θ*) + n_t      (h > 0 fixed curvatures, n_t fixed noise)

so any difference would feed back into later steps.  After every step the params
are compared elementwise (relative error, params stay away from 0); the state
(Optax's ``mu``/``nu``) and the displacement θ_t − θ_0 (which shows differences the
params' own rounding hides) by max-norm relative error.  Tolerance: 1e-9 in float64
for all of them.
"""
import numpy as np
import pytest

import symopt

STEPS = 100
RTOL_F64 = 1e-9
SHAPES = [(3, 4), (5,)]

#: (symopt rule, symopt keyword arguments, Optax transformation built from the optax
#: module).  Cases passing only ``lr`` run both libraries with their own defaults
#: (Optax's learning rate has none).
CASES = [
    ("lion", dict(lr=1e-4), lambda o: o.lion(1e-4)),
    ("lion", dict(lr=3e-3, b1=0.8, b2=0.95, weight_decay=0.05),
     lambda o: o.lion(3e-3, b1=0.8, b2=0.95, weight_decay=0.05)),
    ("lion", dict(lr=2e-3, weight_decay=0.0), lambda o: o.lion(2e-3, weight_decay=0.0)),
    ("adabelief", dict(lr=1e-3), lambda o: o.adabelief(1e-3)),
    ("adabelief", dict(lr=2e-2, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-6),
     lambda o: o.adabelief(2e-2, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-6)),
    ("adabelief", dict(lr=1e-2, nesterov=True), lambda o: o.adabelief(1e-2, nesterov=True)),
    ("adabelief", dict(lr=5e-3, b1=0.7, b2=0.9, eps=1e-6, eps_root=0.0, nesterov=True),
     lambda o: o.adabelief(5e-3, b1=0.7, b2=0.9, eps=1e-6, eps_root=0.0, nesterov=True)),
    ("yogi", dict(lr=1e-2), lambda o: o.yogi(1e-2)),
    ("yogi", dict(lr=3e-2, b1=0.8, b2=0.99, eps=1e-6),
     lambda o: o.yogi(3e-2, b1=0.8, b2=0.99, eps=1e-6)),
    ("yogi", dict(lr=1e-2, eps=1e-4, eps_root=1e-8, initial_accumulator_value=0.5),
     lambda o: o.chain(o.scale_by_yogi(eps=1e-4, eps_root=1e-8, initial_accumulator_value=0.5),
                       o.scale_by_learning_rate(1e-2))),
]


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


def _problem(seed):
    rng = np.random.default_rng(seed)
    # |θ| in [2, 3]: the largest total move here (yogi, 100 steps of ~3e-2) is ~1.5.
    theta0 = [rng.uniform(2.0, 3.0, s) * rng.choice([-1.0, 1.0], s) for s in SHAPES]
    target = [rng.normal(0.0, 1.0, s) for s in SHAPES]
    curv = [rng.uniform(0.1, 2.0, s) for s in SHAPES]
    noise = [[rng.normal(0.0, 0.5, s) for s in SHAPES] for _ in range(STEPS)]
    return theta0, target, curv, noise


def _grads(params, target, curv, noise_t):
    return [h * (p - c) + n for p, c, h, n in zip(params, target, curv, noise_t)]


def _optax_state_moments(jax, state):
    """(mu, nu) leaves of the first Optax state that has them (nu is None for Lion)."""
    for s in jax.tree_util.tree_leaves(state, is_leaf=lambda x: hasattr(x, "mu")):
        if hasattr(s, "mu"):
            return s.mu, getattr(s, "nu", None)
    raise AssertionError("no mu in the Optax state")


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def _rel_norm(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize("case", range(len(CASES)),
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw, _ in CASES])
def test_trajectory_equals_optax_f64(case, jx):
    optax, jax, jnp = jx
    name, kw, make_tx = CASES[case]
    theta0, target, curv, noise = _problem(100 + case)

    ours = [p.copy() for p in theta0]
    opt = symopt.optimizer(name, ours, **kw)

    tx = make_tx(optax)
    theirs = [jnp.asarray(p) for p in theta0]
    tx_state = tx.init(theirs)

    @jax.jit
    def optax_step(params, state, noise_t):
        grads = _grads(params, target, curv, noise_t)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    worst = {"params": 0.0, "displacement": 0.0, "mu": 0.0, "nu": 0.0}
    for step in range(STEPS):
        opt.step(_grads(ours, target, curv, noise[step]))
        theirs, tx_state = optax_step(theirs, tx_state, noise[step])
        mu, nu = _optax_state_moments(jax, tx_state)
        for j in range(len(SHAPES)):
            assert theirs[j].dtype == jnp.float64
            worst["params"] = max(worst["params"], _rel(ours[j], theirs[j]))
            worst["displacement"] = max(worst["displacement"],
                                        _rel_norm(ours[j] - theta0[j], np.asarray(theirs[j]) - theta0[j]))
            worst["mu"] = max(worst["mu"], _rel_norm(opt.state[j]["mu"], mu[j]))
            if nu is not None:
                worst["nu"] = max(worst["nu"], _rel_norm(opt.state[j]["nu"], nu[j]))
    print(f"{name} {kw}: max relative error {worst}")
    assert max(worst.values()) <= RTOL_F64, worst
    # The run moved the params well beyond rounding: the comparison is not vacuous.
    assert max(float(np.max(np.abs(p - p0))) for p, p0 in zip(ours, theta0)) > 1e-3
