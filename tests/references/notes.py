"""The source notes' update rules, transcribed by hand (``shared/seed/optimizer-notes.md``).

Plain NumPy, float64, one function per formula of the notes, written from the notes
and not from symopt's rules.  Constants are the notes' own: ε = 1e-9 inside the
square root, β1 = 0.9, β2 = 0.999, t counted from 1.  The notes give no learning
rate (``lr`` has no default here) and no RMSProp γ (symopt documents 0.9, the
default below).  State: ``state[key]`` is a list with one array per tensor, keyed
like the rules' ``state_dict`` (``m``, ``v``).
"""
import numpy as np

EPS = 1e-9
BETAS = (0.9, 0.999)


def _zeros(state, key, params):
    if key not in state:
        state[key] = [np.zeros_like(p) for p in params]
    return state[key]


def gd(params, grads, state, t, *, lr):
    """θ_t = θ_{t-1} − α ∇θ (1/N) Σ J  (``grads`` holds the full-batch mean gradient)."""
    for theta, g in zip(params, grads):
        theta -= lr * g


def sgd(params, grads, state, t, *, lr):
    """θ_t = θ_{t-1} − α ∇θ (1/BS) Σ J  (``grads`` holds the mini-batch mean gradient)."""
    for theta, g in zip(params, grads):
        theta -= lr * g


def adagrad(params, grads, state, t, *, lr, eps=EPS):
    """v_t = v_{t-1} + g_t²;  θ_t = θ_{t-1} − α g_t / √(v_t + ε)."""
    vs = _zeros(state, "v", params)
    for theta, g, v in zip(params, grads, vs):
        v[...] = v + g**2
        theta[...] = theta - lr * g / np.sqrt(v + eps)


def rmsprop(params, grads, state, t, *, lr, gamma=0.9, eps=EPS):
    """v_t = γ v_{t-1} + (1 − γ) g_t²;  θ_t = θ_{t-1} − α g_t / √(v_t + ε)."""
    vs = _zeros(state, "v", params)
    for theta, g, v in zip(params, grads, vs):
        v[...] = gamma * v + (1 - gamma) * g**2
        theta[...] = theta - lr * g / np.sqrt(v + eps)


def adam(params, grads, state, t, *, lr, betas=BETAS, eps=EPS):
    """m_t = β1 m_{t-1} + (1−β1) g_t;  v_t = β2 v_{t-1} + (1−β2) g_t²;  θ_t = θ_{t-1} − α m_t / √(v_t + ε)."""
    beta1, beta2 = betas
    ms, vs = _zeros(state, "m", params), _zeros(state, "v", params)
    for theta, g, m, v in zip(params, grads, ms, vs):
        m[...] = beta1 * m + (1 - beta1) * g
        v[...] = beta2 * v + (1 - beta2) * g**2
        theta[...] = theta - lr * m / np.sqrt(v + eps)


def adam_warmup(params, grads, state, t, *, lr, betas=BETAS, eps=EPS):
    """Adam with the "warm up": m̂_t = m_t / (1 − β1^t), v̂_t = v_t / (1 − β2^t) in place of m_t, v_t."""
    beta1, beta2 = betas
    ms, vs = _zeros(state, "m", params), _zeros(state, "v", params)
    for theta, g, m, v in zip(params, grads, ms, vs):
        m[...] = beta1 * m + (1 - beta1) * g
        v[...] = beta2 * v + (1 - beta2) * g**2
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        theta[...] = theta - lr * m_hat / np.sqrt(v_hat + eps)
