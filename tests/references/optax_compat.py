"""Optax 0.2.8's Lion, AdaBelief and Yogi as NumPy reference steps.

Written from Optax's source (``optax/_src/alias.py``: ``lion``, ``adabelief``,
``yogi``; ``optax/_src/transform.py``: ``scale_by_lion``, ``scale_by_belief``,
``scale_by_yogi``; ``add_decayed_weights``, ``scale_by_learning_rate``), operation
for operation, in float64.  Keyword defaults are Optax's; Optax's learning rate
has none, so ``lr`` has none here.  ``state["mu"]``, ``state["nu"]``: lists of one
array per tensor (Optax's state field names); ``t`` is Optax's incremented count.
"""
import numpy as np


def _full(state, key, params, value=0.0):
    if key not in state:
        state[key] = [np.full_like(p, value) for p in params]
    return state[key]


def lion(params, grads, state, t, *, lr, b1=0.9, b2=0.99, weight_decay=1e-3):
    """scale_by_lion -> add_decayed_weights -> scale_by_learning_rate, then apply_updates."""
    mus = _full(state, "mu", params)
    for p, g, mu in zip(params, grads, mus):
        u = np.sign((1.0 - b1) * g + b1 * mu)       # _comb, mode="hard"
        mu[...] = (1 - b2) * g + b2 * mu              # tree_update_moment(order=1)
        u = u + weight_decay * p                      # add_decayed_weights (before p changes)
        p += -lr * u                                  # scale_by_learning_rate, apply_updates


def adabelief(params, grads, state, t, *, lr, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, nesterov=False):
    """scale_by_belief -> scale_by_learning_rate."""
    mus, nus = _full(state, "mu", params), _full(state, "nu", params)
    for p, g, mu, nu in zip(params, grads, mus, nus):
        mu[...] = (1 - b1) * g + b1 * mu
        err = g - mu
        nu[...] = (1 - b2) * err**2 + b2 * nu
        nu += eps_root                                # stored: eps_root enters the moment itself
        if nesterov:
            mu_hat = b1 * (mu / (1 - b1 ** (t + 1))) + (1 - b1) * (g / (1 - b1**t))
        else:
            mu_hat = mu / (1 - b1**t)
        nu_hat = nu / (1 - b2**t)
        p += -lr * (mu_hat / (np.sqrt(nu_hat) + eps))


def yogi(params, grads, state, t, *, lr, b1=0.9, b2=0.999, eps=1e-3, eps_root=0.0,
         initial_accumulator_value=1e-6):
    """scale_by_yogi -> scale_by_learning_rate (optax.yogi exposes b1, b2, eps; scale_by_yogi the rest)."""
    mus = _full(state, "mu", params, initial_accumulator_value)
    nus = _full(state, "nu", params, initial_accumulator_value)
    for p, g, mu, nu in zip(params, grads, mus, nus):
        mu[...] = (1 - b1) * g + b1 * mu
        g2 = g * g                                    # abs_sq for real g
        nu[...] = nu - (1 - b2) * np.sign(nu - g2) * g2
        mu_hat = mu / (1 - b1**t)
        nu_hat = nu / (1 - b2**t)
        p += -lr * (mu_hat / (np.sqrt(nu_hat + eps_root) + eps))
