"""The source notes' rules, to the letter (``../shared/seed/optimizer-notes.md``).

* ``notes.gd``:   θ_t = θ_{t-1} − α ∇θ (1/N) Σ J   (g is the full-batch mean gradient)
* ``notes.sgd``:  the same update with g the mini-batch mean gradient
* ``notes.adagrad``: v_t = v_{t-1} + g², θ_t = θ_{t-1} − α g / √(v_t + ε)
* ``notes.rmsprop``: v_t = γ v_{t-1} + (1−γ) g², θ_t = θ_{t-1} − α g / √(v_t + ε)
* ``notes.adam``: m, v as usual, θ_t = θ_{t-1} − α m_t / √(v_t + ε)  (no bias correction)
* ``notes.adam_warmup``: the same with m̂_t = m_t/(1−β1^t), v̂_t = v_t/(1−β2^t)

ε sits inside the square root and is 1e-9 (the notes give it with Adam; the same
value is used for Adagrad and RMSProp), β1 = 0.9, β2 = 0.999.  The notes give no
learning rate and no RMSProp γ: symopt uses α = 0.01 (GD, SGD, Adagrad, RMSProp),
α = 0.001 (Adam) and γ = 0.9, Hinton's usual value.  The learning rate is passed
as ``lr`` like every other rule.
"""

from __future__ import annotations

import sympy as sp

from .metadata import Hyper, t
from .rule import Family, Rule

theta, g, m, v = sp.symbols("theta g m v")
m_hat, v_hat = sp.symbols("m_hat v_hat")
alpha, eps, gamma, beta1, beta2 = sp.symbols("alpha epsilon gamma beta1 beta2")

_SRC = "notes"
_REF = ("symopt source notes (shared/seed/optimizer-notes.md)",)
_LATEX = {"beta1": r"\beta_{1}", "beta2": r"\beta_{2}", "m_hat": r"\hat{m}_{t}", "v_hat": r"\hat{v}_{t}"}


def _lr(default: float) -> Hyper:
    return Hyper(default, 0.0, key="lr", doc="learning rate α")


EPS = Hyper(1e-9, 0.0, key="eps", doc="ε, added inside the square root")
BETA1 = Hyper(0.9, 0.0, 1.0, high_open=True, key="betas", index=0, doc="β1, decay of the first moment")
BETA2 = Hyper(0.999, 0.0, 1.0, high_open=True, key="betas", index=1, doc="β2, decay of the second moment")


def _rule(name, **kw):
    return Rule(name, param=theta, grad=g, source=_SRC, references=_REF, latex_names=_LATEX, **kw)


def gd() -> Rule:
    """Batch gradient descent: θ_t = θ_{t-1} − α g_t, g_t the mean gradient over all N samples."""
    return _rule("notes.gd", hyper={alpha: _lr(0.01)}, updates=[(theta, theta - alpha * g)],
                 doc="Batch gradient descent: g is the gradient of the mean loss over all N samples.")


def sgd() -> Rule:
    """Mini-batch SGD: θ_t = θ_{t-1} − α g_t, g_t the mean gradient over a mini-batch of BS samples."""
    return _rule("notes.sgd", hyper={alpha: _lr(0.01)}, updates=[(theta, theta - alpha * g)],
                 doc="Stochastic (mini-batch) gradient descent: g is the gradient of the mean mini-batch loss.")


def adagrad() -> Rule:
    """v_t = v_{t-1} + g_t², θ_t = θ_{t-1} − α g_t / √(v_t + ε)."""
    return _rule("notes.adagrad", state={v: 0}, hyper={alpha: _lr(0.01), eps: EPS},
                 updates=[(v, v + g**2), (theta, theta - alpha * g / sp.sqrt(v + eps))],
                 doc="Adagrad as in the notes (ε inside the square root).")


def rmsprop() -> Rule:
    """v_t = γ v_{t-1} + (1−γ) g_t², θ_t = θ_{t-1} − α g_t / √(v_t + ε); γ = 0.9 by default."""
    gam = Hyper(0.9, 0.0, 1.0, high_open=True, key="gamma",
                doc="γ, decay of the squared-gradient average (the notes give none; 0.9 is Hinton's value)")
    return _rule("notes.rmsprop", state={v: 0}, hyper={alpha: _lr(0.01), gamma: gam, eps: EPS},
                 updates=[(v, gamma * v + (1 - gamma) * g**2), (theta, theta - alpha * g / sp.sqrt(v + eps))],
                 doc="RMSProp as in the notes (ε inside the square root, γ = 0.9 by default).")


def adam() -> Rule:
    """Adam without bias correction: θ_t = θ_{t-1} − α m_t / √(v_t + ε)."""
    return _rule("notes.adam", state={m: 0, v: 0},
                 hyper={alpha: _lr(1e-3), beta1: BETA1, beta2: BETA2, eps: EPS},
                 updates=[(m, beta1 * m + (1 - beta1) * g),
                          (v, beta2 * v + (1 - beta2) * g**2),
                          (theta, theta - alpha * m / sp.sqrt(v + eps))],
                 doc="Adam as in the notes, without bias correction (ε inside the square root).")


def adam_warmup() -> Rule:
    """Adam with the notes' "warm up" (bias correction): m̂ = m/(1−β1^t), v̂ = v/(1−β2^t)."""
    return _rule("notes.adam_warmup", state={m: 0, v: 0},
                 hyper={alpha: _lr(1e-3), beta1: BETA1, beta2: BETA2, eps: EPS},
                 updates=[(m, beta1 * m + (1 - beta1) * g),
                          (v, beta2 * v + (1 - beta2) * g**2),
                          (m_hat, m / (1 - beta1**t)),
                          (v_hat, v / (1 - beta2**t)),
                          (theta, theta - alpha * m_hat / sp.sqrt(v_hat + eps))],
                 doc="Adam as in the notes with the bias correction ('warm up'), ε inside the square root.")


def families() -> list[Family]:
    out = []
    for build in (gd, sgd, adagrad, rmsprop, adam, adam_warmup):
        r = build()
        out.append(Family(r.name, [(sp.true, r)], doc=r.doc, source="the source notes",
                          references=_REF, group="notes"))
    return out
