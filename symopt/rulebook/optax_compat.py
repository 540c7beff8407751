"""Optax-defined rules: ``lion``, ``adabelief``, ``yogi`` (Optax 0.2.8, ``optax/_src/alias.py``).

Each rule is Optax's gradient transformation chain written as one elementwise
update, with Optax's argument names (``b1``, ``b2``, ``eps``, ``eps_root``,
``weight_decay``) and defaults; the learning rate is passed as ``lr`` like every
other symopt rule.  Optax's ``learning_rate`` has no default: symopt's defaults are
stated in each family's doc.  State keys are Optax's state field names (``mu``,
``nu``).  ``t`` is Optax's incremented ``count`` (1 at the first update).

Optax's two epsilons:

* ``eps`` is added *outside* the square root: ``m̂ / (√v̂ + eps)``;
* ``eps_root`` is added *inside* the square root (Yogi: ``√(v̂ + eps_root)``) or, for
  AdaBelief, to the stored second moment itself (``s_t = … + eps_root``, then bias
  corrected), exactly as ``scale_by_belief`` does.

Not carried over: schedules (``lr`` etc. are per-step values the caller may change
between steps), ``mu_dtype``, Lion's ``mask`` and ``scale_by_lion``'s ``mode`` /
``smooth_beta`` (not arguments of ``optax.lion``).
"""

from __future__ import annotations

import sympy as sp

from .metadata import Hyper, State, t
from .rule import Family, Rule

theta, g = sp.symbols("theta g")
m, v, s, c = sp.symbols("m v s c")
m_hat, v_hat, s_hat = sp.symbols("m_hat v_hat s_hat")
alpha, beta1, beta2 = sp.symbols("alpha beta1 beta2")
eps, eps_root, lam, v0 = sp.symbols("epsilon epsilon_root lambda v0")
nesterov = sp.Symbol("nesterov")

_SRC = "optax 0.2.8"
_LATEX = {"beta1": r"\beta_{1}", "beta2": r"\beta_{2}", "m_hat": r"\hat{m}_{t}", "v_hat": r"\hat{v}_{t}",
          "s_hat": r"\hat{s}_{t}", "epsilon_root": r"\bar{\epsilon}", "v0": r"v_{0}"}


def _lr(default: float, why: str) -> Hyper:
    return Hyper(default, 0.0, key="lr", doc=f"learning rate α (Optax's learning_rate; {why})")


def _beta(default: float, key: str, doc: str, *, closed: bool = False) -> Hyper:
    return Hyper(default, 0.0, 1.0, high_open=not closed, key=key, doc=doc)


def _rule(name, doc, refs, **kw):
    return Rule(name, param=theta, grad=g, source=_SRC, references=refs, latex_names=_LATEX, doc=doc, **kw)


# -----------------------------------------------------------------------------
# Lion
# -----------------------------------------------------------------------------
LION_REFS = ("Chen et al., Symbolic Discovery of Optimization Algorithms, arXiv:2302.06675 (2023)",
             "optax.lion (optax 0.2.8: scale_by_lion, add_decayed_weights, scale_by_learning_rate)")
LION_DOC = """Lion, as optax.lion (Optax 0.2.8).

    c_t = β1 m_{t-1} + (1 − β1) g_t
    θ_t = θ_{t-1} − α (sign(c_t) + λ θ_{t-1})
    m_t = β2 m_{t-1} + (1 − β2) g_t

α = lr (default 1e-4: Optax has no default; Lion's learning rate is usually
3-10x smaller than AdamW's 1e-3), β1 = b1 = 0.9, β2 = b2 = 0.99,
λ = weight_decay = 1e-3 (multiplied by the learning rate, as in Optax and
PyTorch, not decoupled from it).  sign(0) = 0.  State: mu = m, initial value 0.
The update direction c_t uses the momentum *before* it is updated with β2."""


def lion() -> Rule:
    """Lion: θ_t = θ_{t-1} − α (sign(β1 m + (1−β1) g) + λ θ_{t-1}); m_t = β2 m + (1−β2) g."""
    hyper = {
        alpha: _lr(1e-4, "symopt's default, Lion's usual 3-10x below AdamW's 1e-3"),
        beta1: _beta(0.9, "b1", "β1, interpolation between momentum and gradient in the update direction",
                     closed=True),
        beta2: _beta(0.99, "b2", "β2, decay of the momentum", closed=True),
        lam: Hyper(1e-3, 0.0, key="weight_decay", doc="λ, weight decay, multiplied by the learning rate"),
    }
    return _rule("lion", LION_DOC, LION_REFS, state={m: State(0, key="mu", doc="momentum")}, hyper=hyper,
                 updates=[(c, beta1 * m + (1 - beta1) * g),
                          (theta, theta - alpha * (sp.sign(c) + lam * theta)),
                          (m, beta2 * m + (1 - beta2) * g)])


# -----------------------------------------------------------------------------
# AdaBelief
# -----------------------------------------------------------------------------
ADABELIEF_REFS = ("Zhuang et al., AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed "
                  "Gradients, NeurIPS 2020, arXiv:2010.07468",
                  "optax.adabelief (optax 0.2.8: scale_by_belief, scale_by_learning_rate)")
ADABELIEF_DOC = """AdaBelief, as optax.adabelief (Optax 0.2.8).

    m_t = β1 m_{t-1} + (1 − β1) g_t
    s_t = β2 s_{t-1} + (1 − β2) (g_t − m_t)² + ε̄
    m̂_t = m_t / (1 − β1^t)
    ŝ_t = s_t / (1 − β2^t)
    θ_t = θ_{t-1} − α m̂_t / (√ŝ_t + ε)

With nesterov=True: m̂_t = β1 m_t / (1 − β1^{t+1}) + (1 − β1) g_t / (1 − β1^t).

α = lr (default 1e-3, the paper's; Optax has no default), β1 = b1 = 0.9,
β2 = b2 = 0.999, ε = eps = 1e-16 (outside the square root), ε̄ = eps_root = 1e-16.
Convention: ε̄ is added to the stored second moment s_t at every step, before the
bias correction (Optax's scale_by_belief), not inside the square root.  The
paper's defaults are eps=1e-8, eps_root=0.  State: mu = m, nu = s, initial 0."""


def _adabelief_hyper() -> dict:
    return {
        alpha: _lr(1e-3, "symopt's default, the paper's value"),
        beta1: _beta(0.9, "b1", "β1, decay of the first moment"),
        beta2: _beta(0.999, "b2", "β2, decay of the second moment of the prediction error g − m"),
        eps: Hyper(1e-16, 0.0, key="eps", doc="ε, added to the denominator outside the square root"),
        eps_root: Hyper(1e-16, 0.0, key="eps_root",
                        doc="ε̄, added to the second moment s_t at every step (before bias correction)"),
    }


def _adabelief_updates(m_hat_expr) -> list:
    return [(m, beta1 * m + (1 - beta1) * g),
            (s, beta2 * s + (1 - beta2) * (g - m) ** 2 + eps_root),
            (m_hat, m_hat_expr),
            (s_hat, s / (1 - beta2**t)),
            (theta, theta - alpha * m_hat / (sp.sqrt(s_hat) + eps))]


def adabelief(nesterov_momentum: bool = False) -> Rule:
    """AdaBelief: s_t = β2 s + (1−β2)(g − m_t)² + ε̄; θ_t = θ − α m̂_t / (√ŝ_t + ε)."""
    state = {m: State(0, key="mu", doc="first moment"),
             s: State(0, key="nu", doc="second moment of the prediction error g − m")}
    if nesterov_momentum:
        mh = beta1 * m / (1 - beta1 ** (t + 1)) + (1 - beta1) * g / (1 - beta1**t)
        return _rule("adabelief_nesterov", ADABELIEF_DOC, ADABELIEF_REFS, state=state,
                     hyper=_adabelief_hyper(), updates=_adabelief_updates(mh))
    return _rule("adabelief", ADABELIEF_DOC, ADABELIEF_REFS, state=state, hyper=_adabelief_hyper(),
                 updates=_adabelief_updates(m / (1 - beta1**t)))


# -----------------------------------------------------------------------------
# Yogi
# -----------------------------------------------------------------------------
YOGI_REFS = ("Zaheer et al., Adaptive Methods for Nonconvex Optimization, NeurIPS 2018",
             "optax.yogi (optax 0.2.8: scale_by_yogi, scale_by_learning_rate)")
YOGI_DOC = """Yogi, as optax.yogi (Optax 0.2.8) with scale_by_yogi's eps_root and initial_accumulator_value.

    m_t = β1 m_{t-1} + (1 − β1) g_t
    v_t = v_{t-1} − (1 − β2) sign(v_{t-1} − g_t²) g_t²
    m̂_t = m_t / (1 − β1^t)
    v̂_t = v_t / (1 − β2^t)
    θ_t = θ_{t-1} − α m̂_t / (√(v̂_t + ε̄) + ε)

α = lr (default 1e-2, the paper's; Optax has no default), β1 = b1 = 0.9,
β2 = b2 = 0.999, ε = eps = 1e-3 (outside the square root; Optax's default is this
large), ε̄ = eps_root = 0 (inside the square root; an argument of scale_by_yogi,
not of optax.yogi), v0 = initial_accumulator_value = 1e-6: Optax starts BOTH
accumulators, m and v, at this value (not only v), and still applies the bias
correction.  sign(0) = 0.  State: mu = m, nu = v."""


def yogi() -> Rule:
    """Yogi: v_t = v − (1−β2) sign(v − g²) g²; θ_t = θ − α m̂_t / (√(v̂_t + ε̄) + ε)."""
    hyper = {
        alpha: _lr(1e-2, "symopt's default, the paper's value"),
        beta1: _beta(0.9, "b1", "β1, decay of the first moment"),
        beta2: _beta(0.999, "b2", "β2, rate of the additive second-moment update"),
        eps: Hyper(1e-3, 0.0, key="eps", doc="ε, added to the denominator outside the square root"),
        eps_root: Hyper(0.0, 0.0, key="eps_root", doc="ε̄, added inside the square root"),
        v0: Hyper(1e-6, 0.0, key="initial_accumulator_value",
                  doc="v0, initial value of both accumulators m and v (Optax: positive values)"),
    }
    state = {m: State(v0, key="mu", doc="first moment"), v: State(v0, key="nu", doc="second moment")}
    return _rule("yogi", YOGI_DOC, YOGI_REFS, state=state, hyper=hyper,
                 updates=[(m, beta1 * m + (1 - beta1) * g),
                          (v, v - (1 - beta2) * sp.sign(v - g**2) * g**2),
                          (m_hat, m / (1 - beta1**t)),
                          (v_hat, v / (1 - beta2**t)),
                          (theta, theta - alpha * m_hat / (sp.sqrt(v_hat + eps_root) + eps))])


def families() -> list[Family]:
    lion_rule, yogi_rule = lion(), yogi()
    return [
        Family("lion", [(sp.true, lion_rule)], doc=LION_DOC, source=_SRC, references=LION_REFS, group="optax"),
        Family("adabelief", [(sp.Not(nesterov), adabelief(False)), (sp.true, adabelief(True))],
               options={nesterov: Hyper(False, kind="bool", doc="Nesterov momentum (optax's nesterov)")},
               doc=ADABELIEF_DOC, source=_SRC, references=ADABELIEF_REFS, group="optax"),
        Family("yogi", [(sp.true, yogi_rule)], doc=YOGI_DOC, source=_SRC, references=YOGI_REFS, group="optax"),
    ]
