"""The research catalog: optimizers from recent papers, each a few lines of SymPy.

Every family names its paper and the library whose implementation its trajectory
is tested against (``tests/test_research_parity.py``: pytorch-optimizer 4.1.0,
schedulefree 1.4.1 or Optax 0.2.8, float64, 100 steps, relative error ≤ 1e-9), and
has an independent NumPy transcription in ``tests/references/research.py``.  Keyword
names and defaults are the reference library's (the paper's when they differ is
said in the doc).  ``t`` is the 1-based step.  Conventions shared with the
torch-compatible rules: ``m.lerp_(g, 1 − β)`` is written m + (1 − β)(g − m);
"decoupled" weight decay multiplies θ by 1 − αλ before the update (as
pytorch-optimizer's ``weight_decouple=True``).

Where the reference keeps a *scalar* history that depends on the learning rate's
past values (LaProp's EMA of lr, AdaBound's base lr, schedule-free's weight sum),
the rule uses the closed form for a constant learning rate -- identical for a
constant lr, and written down in each doc.  Rules that need a number computed
from a whole tensor (LAMB, LARS, MARS, Fromage, StableAdamW, Adafactor's RMS
clipping, cautious masking) use :mod:`.reduction` sums: one read-only pass, then
the one elementwise pass.
"""

from __future__ import annotations

import sympy as sp

from .compose import compose
from .reduction import TensorMean, tensor_norm, tensor_rms
from .metadata import Hyper, State, t
from .rule import Family, Rule
from .transforms import cautious, decoupled_weight_decay

theta, g = sp.symbols("theta g")
m, v, n, s, z, b, gp, vmax, x0, G, m2 = sp.symbols("m v n s z b g_prev v_max x0 G m2")
u, d, c, r, q, w = sp.symbols("u d c r q w")
lr, wd, eps = sp.symbols("alpha lambda epsilon")
b1, b2, b3 = sp.symbols("beta1 beta2 beta3")

_LATEX = {"alpha": r"\alpha", "lambda": r"\lambda", "epsilon": r"\epsilon", "beta1": r"\beta_{1}",
          "beta2": r"\beta_{2}", "beta3": r"\beta_{3}", "g_prev": r"g^{\mathrm{prev}}", "v_max": r"v^{\max}",
          "x0": r"x_{0}", "m2": r"m^{\mathrm{slow}}", "nu1": r"\nu_{1}", "nu2": r"\nu_{2}", "gamma_ab": r"\gamma",
          "final_lr": r"\alpha^{*}", "eta_tc": r"\eta", "mu": r"\mu", "rho": r"\rho", "rho_inf": r"\rho_{\infty}",
          "r_t": r"r_{t}", "c_clip": r"c", "a_mix": r"a", "T_ab3": r"T", "delta_thr": r"\rho_{\min}",
          "eps_root": r"\bar{\epsilon}", "eps_scale": r"\epsilon_{2}", "d_rate": r"\hat{\beta}_{2}",
          "gamma_m": r"\gamma", "min_norm": r"\epsilon_{\min}", "nesterov": r"\text{nesterov}",
          "degenerated": r"\text{sgd}"}

PT = "pytorch-optimizer 4.1.0"
SF = "schedulefree 1.4.1"
OX = "optax 0.2.8"
#: EMA of squares pytorch-optimizer's ``apply_ams_bound`` adds inside the root: √(v + 1e-15) + ε.
PT_SQ_EPS = sp.Float(1e-15)


def _lr(default, doc="learning rate α"):
    return Hyper(default, 0.0, key="lr", doc=doc)


def _beta(default, index, doc, key="betas"):
    return Hyper(default, 0.0, 1.0, high_open=True, key=key, index=index, doc=doc)


def _eps(default, doc="ε, added to the denominator outside the square root", key="eps"):
    return Hyper(default, 0.0, key=key, doc=doc)


def _wd(default=0.0, doc="λ, decoupled weight decay: θ ← θ (1 − αλ) before the update", key="weight_decay"):
    return Hyper(default, 0.0, key=key, doc=doc)


def _rule(name, updates, state, hyper, doc, refs, latex=None):
    return Rule(name, param=theta, grad=g, updates=updates, state=state, hyper=hyper, doc=doc,
                source="research", references=refs, latex_names={**_LATEX, **(latex or {})})


def _lerp(a, target, weight):
    """torch's ``a.lerp_(target, weight)``: a + weight (target − a)."""
    return a + weight * (target - a)


def _bc(beta):
    return 1 - beta**t


# ---------------------------------------------------------------------------------------------
def adan() -> Rule:
    """Adan (Xie et al. 2022), the paper's Algorithm 1 with its proximal weight decay."""
    nf = sp.Piecewise((0, sp.Eq(t, 1)), (1, True))          # g_0 := g_1: no difference at step 1
    hyper = {lr: _lr(1e-3), b1: _beta(0.98, 0, "β1, EMA of g"), b2: _beta(0.92, 1, "β2, EMA of g − g_prev"),
             b3: _beta(0.99, 2, "β3, EMA of (g + β2 (g − g_prev))²"), eps: _eps(1e-8),
             wd: _wd(0.0, "λ, proximal weight decay: θ ← θ' / (1 + αλ) after the update")}
    state = {m: State(0, "exp_avg"), v: State(0, "exp_avg_diff"), n: State(0, "exp_avg_sq"),
             gp: State(0, "previous_grad", "the previous gradient (pytorch-optimizer stores −g)")}
    return _rule("adan", [(d, nf * (g - gp)), (m, _lerp(m, g, 1 - b1)), (v, _lerp(v, d, 1 - b2)),
                          (n, b3 * n + (1 - b3) * (g + b2 * d) ** 2),
                          (theta, (theta - lr * (m / _bc(b1) + b2 * v / _bc(b2))
                                   / (sp.sqrt(n) / sp.sqrt(_bc(b3)) + eps)) / (1 + lr * wd)),
                          (gp, g)], state, hyper, ADAN_DOC, ADAN_REFS)


ADAN_REFS = ("Xie et al., Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep Models, "
             "arXiv:2208.06677 (2022), Algorithm 1", f"{PT}: Adan (weight_decouple=False)")
ADAN_DOC = """Adan (Xie et al. 2022, Algorithm 1), as pytorch-optimizer's Adan with weight_decouple=False.

    d_t = g_t − g_{t−1}  (0 at t = 1)
    m_t = β1 m + (1−β1) g,  v_t = β2 v + (1−β2) d,  n_t = β3 n + (1−β3)(g + β2 d)²
    θ_t = [θ − α (m_t/(1−β1^t) + β2 v_t/(1−β2^t)) / (√(n_t/(1−β3^t)) + ε)] / (1 + αλ)

betas = (0.98, 0.92, 0.99) are the paper's 1 − β (the paper writes β1 = 0.02...);
lr 1e-3, eps 1e-8 outside the root, weight_decay 0.  Optax's adan weights the
difference by 1 − b2 where the paper and pytorch-optimizer use β2 (= 1 − the paper's
β2), so its trajectories differ; symopt follows the paper."""


def adopt() -> Rule:
    """ADOPT (Taniguchi et al. 2024): normalise g by the *previous* second moment, then clip."""
    first = sp.Eq(t, 1)
    hyper = {lr: _lr(1e-3), b1: _beta(0.9, 0, "β1, EMA of the normalised gradient"),
             b2: _beta(0.9999, 1, "β2, EMA of g²"), eps: _eps(1e-6, "ε, floor of √v"),
             wd: _wd(0.0, "λ, coupled weight decay: g ← g + λθ")}
    nrm = sp.Min(sp.Max(g / sp.Max(sp.sqrt(v), eps), -t**sp.Rational(1, 4)), t**sp.Rational(1, 4))
    return _rule("adopt", [(g, g + wd * theta),
                           (m, sp.Piecewise((m, first), (_lerp(m, nrm, 1 - b1), True))),
                           (theta, theta - lr * m),
                           (v, sp.Piecewise((v + g**2, first), (b2 * v + (1 - b2) * g**2, True)))],
                 {m: State(0, "exp_avg"), v: State(0, "exp_avg_sq")}, hyper, ADOPT_DOC, ADOPT_REFS)


ADOPT_REFS = ("Taniguchi et al., ADOPT: Modified Adam Can Converge with Any β2 with the Optimal Rate, "
              "NeurIPS 2024, arXiv:2411.02853", f"{PT}: ADOPT")
ADOPT_DOC = """ADOPT (Taniguchi et al. 2024), as pytorch-optimizer's ADOPT (clip_lambda t^{1/4}).

    t = 1:  v_1 = g²  (no param update)
    t > 1:  m_t = β1 m + (1−β1) clip(g / max(√v_{t−1}, ε), t^{1/4});  θ_t = θ − α m_t;
            v_t = β2 v + (1−β2) g²

lr 1e-3, betas (0.9, 0.9999), eps 1e-6, weight_decay 0 (coupled: g ← g + λθ).
Optax's contrib.adopt clips at (t−1)^{1/4} (its count starts at 0); the paper and
pytorch-optimizer use t^{1/4}."""


def laprop() -> Rule:
    """LaProp (Ziyin et al. 2020): momentum of the *normalised* gradient."""
    hyper = {lr: _lr(4e-4), b1: _beta(0.9, 0, "β1 (μ), momentum"), b2: _beta(0.999, 1, "β2 (ν), EMA of g²"),
             eps: _eps(1e-15), wd: _wd(0.0, "λ, decoupled weight decay, applied after the update: θ ← θ' (1 − αλ)")}
    den = (sp.sqrt(v + PT_SQ_EPS) + eps) / sp.sqrt(_bc(b2))
    return _rule("laprop", [(v, b2 * v + (1 - b2) * g**2), (m, b1 * m + (1 - b1) * lr * g / den),
                            (theta, (theta - m / _bc(b1)) * (1 - lr * wd))],
                 {m: State(0, "exp_avg"), v: State(0, "exp_avg_sq")}, hyper, LAPROP_DOC, LAPROP_REFS)


LAPROP_REFS = ("Ziyin et al., LaProp: Separating Momentum and Adaptivity in Adam, arXiv:2002.04839 (2020)",
               f"{PT}: LaProp (foreach=False)")
LAPROP_DOC = """LaProp (Ziyin et al. 2020), as pytorch-optimizer's LaProp (per-parameter path).

    v_t = β2 v + (1−β2) g²
    m_t = β1 m + (1−β1) α g √(1−β2^t) / (√(v_t + 10⁻¹⁵) + ε)
    θ_t = (θ − m_t / (1−β1^t)) (1 − αλ)

lr 4e-4, betas (0.9, 0.999), eps 1e-15, weight_decay 0.  pytorch-optimizer divides by
an EMA of past learning rates over lr; for a constant lr that is 1 − β1^t, which symopt
uses (with a schedule the two differ).  Its foreach path rounds the step size to
float32; the per-parameter path (foreach=False) is the float64 reference."""


def _adabound(ams: bool) -> Rule:
    final, gam = sp.symbols("final_lr gamma_ab")
    hyper = {lr: _lr(1e-3), final: Hyper(0.1, 0.0, key="final_lr", doc="α*, the SGD learning rate the bounds reach"),
             b1: _beta(0.9, 0, "β1"), b2: _beta(0.999, 1, "β2"),
             gam: Hyper(1e-3, 0.0, low_open=True, key="gamma", doc="γ, speed of the bounds' convergence"),
             eps: _eps(1e-8), wd: _wd()}
    state = {m: State(0, "exp_avg"), v: State(0, "exp_avg_sq")}
    ups = [(m, _lerp(m, g, 1 - b1)), (v, b2 * v + (1 - b2) * g**2)]
    den = v
    if ams:
        state[vmax] = State(0, "max_exp_avg_sq")
        ups.append((vmax, sp.Max(vmax, v)))
        den = vmax
    step = sp.Min(sp.Max(lr * sp.sqrt(_bc(b2)) / _bc(b1) / (sp.sqrt(den + PT_SQ_EPS) + eps),
                         final * (1 - 1 / (gam * t + 1))), final * (1 + 1 / (gam * t)))
    ups.append((theta, theta * (1 - lr * wd) - step * m))
    name = "amsbound" if ams else "adabound"
    return _rule(name, ups, state, hyper, ADABOUND_DOC, ADABOUND_REFS)


ADABOUND_REFS = ("Luo et al., Adaptive Gradient Methods with Dynamic Bound of Learning Rate, ICLR 2019",
                 f"{PT}: AdaBound (ams_bound=False / True)")
ADABOUND_DOC = """AdaBound and AMSBound (Luo et al. 2019), as pytorch-optimizer's AdaBound (the authors' code).

    m, v as Adam (AMSBound: v̂ = max(v̂, v), used below)
    η_t = clip(α √(1−β2^t)/(1−β1^t) / (√(v + 10⁻¹⁵) + ε),  α*(1 − 1/(γt + 1)),  α*(1 + 1/(γt)))
    θ_t = θ (1 − αλ) − η_t ⊙ m_t

lr 1e-3, final_lr 0.1, betas (0.9, 0.999), gamma 1e-3, eps 1e-8, weight_decay 0.
pytorch-optimizer scales final_lr by lr / (initial lr), 1 for a constant lr (symopt)."""


def adamod() -> Rule:
    """AdaMod (Ding et al. 2019): an EMA of Adam's per-element step sizes caps them."""
    hyper = {lr: _lr(1e-3), b1: _beta(0.9, 0, "β1"), b2: _beta(0.99, 1, "β2"),
             b3: _beta(0.9999, 2, "β3, EMA of the step sizes"), eps: _eps(1e-8), wd: _wd()}
    eta = lr * sp.sqrt(_bc(b2)) / _bc(b1) / (sp.sqrt(v) + eps)
    return _rule("adamod", [(m, _lerp(m, g, 1 - b1)), (v, b2 * v + (1 - b2) * g**2), (s, _lerp(s, eta, 1 - b3)),
                            (theta, theta * (1 - lr * wd) - sp.Min(eta, s) * m)],
                 {m: State(0, "exp_avg"), v: State(0, "exp_avg_sq"), s: State(0, "exp_avg_lr")},
                 hyper, ADAMOD_DOC, ("Ding et al., An Adaptive and Momental Bound Method for Stochastic Learning, "
                                     "arXiv:1910.12249 (2019)", f"{PT}: AdaMod"))


ADAMOD_DOC = """AdaMod (Ding et al. 2019), as pytorch-optimizer's AdaMod.

    m, v as Adam;  η_t = α √(1−β2^t)/(1−β1^t) / (√v_t + ε)
    s_t = β3 s + (1−β3) η_t;   θ_t = θ (1 − αλ) − min(η_t, s_t) ⊙ m_t

lr 1e-3, betas (0.9, 0.99, 0.9999), eps 1e-8, weight_decay 0."""


def qhadam() -> Rule:
    """QHAdam (Ma & Yarats 2019): quasi-hyperbolic mixes of the moments and the raw gradient."""
    nu1, nu2 = sp.symbols("nu1 nu2")
    hyper = {lr: _lr(1e-3), b1: _beta(0.995, 0, "β1"), b2: _beta(0.999, 1, "β2"),
             nu1: Hyper(0.7, 0.0, 1.0, key="nus", index=0, doc="ν1, weight of the first moment against g"),
             nu2: Hyper(1.0, 0.0, 1.0, key="nus", index=1, doc="ν2, weight of the second moment against g²"),
             eps: _eps(1e-8), wd: _wd(0.0, "λ, coupled weight decay: g ← g + λθ")}
    return _rule("qhadam", [(g, g + wd * theta), (m, _lerp(m, g, (1 - b1) / _bc(b1))),
                            (v, _lerp(v, g**2, (1 - b2) / _bc(b2))),
                            (theta, theta - lr * (nu1 * m + (1 - nu1) * g)
                             / (sp.sqrt(nu2 * v + (1 - nu2) * g**2) + eps))],
                 {m: State(0, "exp_avg"), v: State(0, "exp_avg_sq")}, hyper, QHADAM_DOC, QH_REFS + (f"{PT}: QHAdam",))


QH_REFS = ("Ma & Yarats, Quasi-hyperbolic momentum and Adam for deep learning, ICLR 2019",)
QHADAM_DOC = """QHAdam (Ma & Yarats 2019), as pytorch-optimizer's QHAdam.

    m_t = m + (1−β1)/(1−β1^t) (g − m)   (the bias-corrected EMA itself)
    v_t = v + (1−β2)/(1−β2^t) (g² − v)
    θ_t = θ − α (ν1 m_t + (1−ν1) g) / (√(ν2 v_t + (1−ν2) g²) + ε)

Defaults are the paper's recommendation: betas (0.995, 0.999), nus (0.7, 1.0);
pytorch-optimizer's are (0.9, 0.999) and (1.0, 1.0), i.e. Adam.  lr 1e-3, eps 1e-8,
weight_decay 0 (coupled)."""


def qhm() -> Rule:
    """QHM (Ma & Yarats 2019): θ ← θ − α (ν b + (1 − ν) g), b the EMA of g."""
    mu, nu = sp.symbols("mu nu")
    hyper = {lr: _lr(1e-3), mu: Hyper(0.999, 0.0, 1.0, high_open=True, key="momentum", doc="β, EMA of g"),
             nu: Hyper(0.7, 0.0, 1.0, key="nu", doc="ν, weight of the momentum against g"),
             wd: _wd(0.0, "λ, coupled weight decay: g ← g + λθ")}
    return _rule("qhm", [(g, g + wd * theta), (b, _lerp(b, g, 1 - mu)),
                         (theta, theta - lr * (nu * b + (1 - nu) * g))],
                 {b: State(0, "momentum_buffer")}, hyper, QHM_DOC, QH_REFS + (f"{PT}: QHM",),
                 latex={"nu": r"\nu"})


QHM_DOC = """QHM (Ma & Yarats 2019), as pytorch-optimizer's QHM.

    b_t = β b + (1−β) g;   θ_t = θ − α (ν b_t + (1−ν) g)

Defaults are the paper's recommendation: momentum β = 0.999, nu ν = 0.7
(pytorch-optimizer's: 0.0 and 1.0, i.e. SGD).  lr 1e-3, weight_decay 0 (coupled)."""


def _schedule_free(adam: bool) -> Rule:
    """Schedule-free SGD / AdamW (Defazio et al. 2024): θ is y, the point where g is taken."""
    ck = 1 / t           # c_{t} = w_t / Σ w: equal weights (r = 0, constant lr, no warm-up)
    hyper = {lr: _lr(0.0025 if adam else 1.0)}
    state = {z: State(theta, "z", "the SGD/AdamW iterate z (starts at the param)")}
    if adam:
        hyper.update({b1: _beta(0.9, 0, "β1, interpolation weight (momentum)"), b2: _beta(0.999, 1, "β2"),
                      eps: _eps(1e-8)})
        state[v] = State(0, "exp_avg_sq")
        ups = [(v, b2 * v + (1 - b2) * g**2), (g, g / (sp.sqrt(v / _bc(b2)) + eps) + wd * theta)]
        beta = b1
    else:
        beta = sp.Symbol("mu")
        hyper[beta] = Hyper(0.9, 0.0, 1.0, high_open=True, key="momentum", doc="β, interpolation weight (momentum)")
        ups = [(g, g + wd * theta)]
    hyper[wd] = _wd(0.0, "λ, weight decay at y: g ← g + λy")
    ups += [(theta, _lerp(theta, z, ck) + lr * (beta * (1 - ck) - 1) * g), (z, z - lr * g)]
    name = "adamw_schedulefree" if adam else "sgd_schedulefree"
    cls = "AdamWScheduleFree" if adam else "SGDScheduleFree"
    return _rule(name, ups, state, hyper, SCHEDULE_FREE_DOC,
                 ("Defazio et al., The Road Less Scheduled, NeurIPS 2024, arXiv:2405.15682", f"{SF}: {cls}"))


SCHEDULE_FREE_DOC = """Schedule-free SGD and AdamW (Defazio et al. 2024), as schedulefree's SGDScheduleFree /
AdamWScheduleFree in train mode.  The param is y (where gradients are taken); z is state.

    (AdamW: v_t = β2 v + (1−β2) g²,  g ← g / (√(v_t/(1−β2^t)) + ε))
    g ← g + λ y;   c_t = 1/t
    y_t = y + c_t (z − y) + α (β (1 − c_t) − 1) g;   z_t = z − α g

The averaged point x, used for evaluation, is x = (y − (1 − β) z) / β.  c_t = 1/t is
schedulefree's w_t/Σw for its defaults (r = 0, warmup_steps = 0) and a constant lr;
its weights t^r·max(lr)^p need a running sum over steps (a scalar history symopt's
rules do not keep), so warm-up and r ≠ 0 are not available.  SGD: lr 1.0,
momentum 0.9; AdamW: lr 0.0025, betas (0.9, 0.999), eps 1e-8; weight_decay 0."""


def mars_adamw() -> Rule:
    """MARS-AdamW (Yuan et al. 2024): variance-reduced gradient c, clipped to norm 1, into AdamW."""
    gam = sp.Symbol("gamma_m")
    hyper = {lr: _lr(3e-3), b1: _beta(0.95, 0, "β1"), b2: _beta(0.99, 1, "β2"),
             gam: Hyper(0.025, 0.0, key="gamma", doc="γ, scale of the gradient correction"), eps: _eps(1e-8),
             wd: _wd()}
    return _rule("mars_adamw", [(c, g + gam * b1 / (1 - b1) * (g - gp)), (c, c / sp.Max(1, tensor_norm(c))),
                                (m, _lerp(m, c, 1 - b1)), (v, b2 * v + (1 - b2) * c**2),
                                (theta, theta * (1 - lr * wd) - lr * m * sp.sqrt(_bc(b2))
                                 / ((sp.sqrt(v + PT_SQ_EPS) + eps) * _bc(b1))),
                                (gp, g)],
                 {m: State(0, "exp_avg"), v: State(0, "exp_avg_sq"), gp: State(0, "last_grad")}, hyper, MARS_DOC,
                 ("Yuan et al., MARS: Unleashing the Power of Variance Reduction for Training Large Models, "
                  "arXiv:2411.10438 (2024), Algorithm 2 (MARS-AdamW)", f"{PT}: MARS (mars_type='adamw', "
                  "optimize_1d=True)"))


MARS_DOC = """MARS-AdamW (Yuan et al. 2024), as pytorch-optimizer's MARS with mars_type='adamw' and
optimize_1d=True (every tensor takes the MARS path).

    c_t = g + γ β1/(1−β1) (g − g_prev);   c_t ← c_t / max(1, ‖c_t‖)   (‖·‖ over the tensor)
    m_t = β1 m + (1−β1) c_t,  v_t = β2 v + (1−β2) c_t²
    θ_t = θ (1 − αλ) − α (m_t/(1−β1^t)) / ((√(v_t + 10⁻¹⁵) + ε)/√(1−β2^t))

lr 3e-3, betas (0.95, 0.99), gamma 0.025, eps 1e-8, weight_decay 0; g_prev starts at 0.
One per-tensor reduction (‖c_t‖)."""


def _adam_core(name: str) -> Rule:
    hyper = {lr: _lr(1e-3), b1: _beta(0.9, 0, "β1"), b2: _beta(0.999, 1, "β2"), eps: _eps(1e-8)}
    return _rule(name, [(m, _lerp(m, g, 1 - b1)), (v, b2 * v + (1 - b2) * g**2),
                        (theta, theta - lr * (m / _bc(b1)) / (sp.sqrt(v) / sp.sqrt(_bc(b2)) + eps))],
                 {m: State(0, "exp_avg"), v: State(0, "exp_avg_sq")}, hyper, "", ())


def _lion_core(name: str) -> Rule:
    hyper = {lr: _lr(1e-4), b1: _beta(0.9, 0, "β1, interpolation in the update direction"),
             b2: _beta(0.99, 1, "β2, EMA of g")}
    return _rule(name, [(u, sp.sign(_lerp(m, g, 1 - b1))), (m, _lerp(m, g, 1 - b2)), (theta, theta - lr * u)],
                 {m: State(0, "exp_avg")}, hyper, "", ())


CAUTIOUS_REFS = ("Liang et al., Cautious Optimizers: Improving Training with One Line of Code, "
                 "arXiv:2411.16085 (2024)",)


def cautious_adamw() -> Rule:
    return compose(_adam_core("cautious_adamw"), cautious(), decoupled_weight_decay(0.01),
                   name="cautious_adamw", doc=CAUTIOUS_ADAMW_DOC, references=CAUTIOUS_REFS)


CAUTIOUS_ADAMW_DOC = """Cautious AdamW (Liang et al. 2024, Algorithm 2): Adam's step only where it agrees with
the gradient's sign, rescaled, then AdamW's decoupled decay; symopt.compose of an Adam rule,
transforms.cautious() and transforms.decoupled_weight_decay(0.01).

    u_t = m̂_t / (√v̂_t + ε);  φ = [u_t ⊙ g_t > 0];  θ_t = θ − α u_t ⊙ φ · n/(Σφ + 1) − αλθ

(n: the tensor's size; the paper's code scales the mask by n/(Σφ + 1) as pytorch-optimizer's
apply_cautious).  lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01 (torch's AdamW).
Verified against a NumPy transcription of the paper's algorithm (no library defines it)."""


def cautious_lion() -> Rule:
    return compose(_lion_core("cautious_lion"), cautious(), decoupled_weight_decay(0.0),
                   name="cautious_lion", doc=CAUTIOUS_LION_DOC,
                   references=CAUTIOUS_REFS + (f"{PT}: Lion(cautious=True)",))


CAUTIOUS_LION_DOC = """Cautious Lion (Liang et al. 2024), as pytorch-optimizer's Lion(cautious=True):
symopt.compose of Lion, transforms.cautious() and transforms.decoupled_weight_decay(0).

    u_t = sign(β1 m + (1−β1) g);  m_t = β2 m + (1−β2) g
    θ_t = θ (1 − αλ) − α u_t ⊙ φ · n/(Σφ + 1),  φ = [u_t ⊙ g > 0]

lr 1e-4, betas (0.9, 0.99), weight_decay 0."""


def lamb() -> Rule:
    """LAMB (You et al. 2020): Adam's direction scaled per tensor by ‖θ‖ / ‖u‖."""
    er = sp.Symbol("eps_root")
    hyper = {lr: _lr(1e-3), b1: _beta(0.9, None, "β1", key="b1"), b2: _beta(0.999, None, "β2", key="b2"),
             eps: _eps(1e-6), er: _eps(0.0, "ε̄, added inside the square root", key="eps_root"),
             wd: Hyper(0.0, 0.0, key="weight_decay", doc="λ, added to the update before the trust ratio: u + λθ")}
    pn, un = tensor_norm(theta), tensor_norm(u)
    return _rule("lamb", [(m, b1 * m + (1 - b1) * g), (v, b2 * v + (1 - b2) * g**2),
                          (u, m / _bc(b1) / (sp.sqrt(v / _bc(b2) + er) + eps) + wd * theta),
                          (r, sp.Piecewise((pn / un, sp.And(pn > 0, un > 0)), (1, True))),
                          (theta, theta - lr * r * u)],
                 {m: State(0, "mu"), v: State(0, "nu")}, hyper, LAMB_DOC,
                 ("You et al., Large Batch Optimization for Deep Learning: Training BERT in 76 minutes, "
                  "ICLR 2020, arXiv:1904.00962", f"{OX}: lamb"), latex={"r": r"r_{t}"})


LAMB_DOC = """LAMB (You et al. 2020), as optax.lamb: Adam, weight decay, trust ratio, learning rate.

    u_t = m̂_t / (√(v̂_t + ε̄) + ε) + λ θ
    r_t = ‖θ‖ / ‖u_t‖  (1 if either norm is 0; norms over the tensor)
    θ_t = θ − α r_t u_t

lr 1e-3, b1 0.9, b2 0.999, eps 1e-6, eps_root 0, weight_decay 0 (Optax's names).
Two per-tensor reductions (‖θ‖, ‖u_t‖) in one read-only pass."""


def lars() -> Rule:
    """LARS (You et al. 2017): SGD with momentum on the trust-ratio-scaled gradient."""
    tc, mu, nes = sp.symbols("eta_tc mu nesterov")
    hyper = {lr: _lr(1e-2), wd: Hyper(0.0, 0.0, key="weight_decay", doc="λ: u = g + λθ"),
             tc: Hyper(1e-3, 0.0, key="trust_coefficient", doc="η, trust coefficient"),
             eps: _eps(0.0, "ε, added to ‖u‖ in the trust ratio"),
             mu: Hyper(0.9, 0.0, 1.0, high_open=True, key="momentum", doc="μ, momentum"),
             nes: Hyper(False, kind="bool", key="nesterov", doc="Nesterov momentum")}
    pn, un = tensor_norm(theta), tensor_norm(u)
    return _rule("lars", [(u, g + wd * theta),
                          (u, u * sp.Piecewise((tc * pn / (un + eps), sp.And(pn > 0, un > 0)), (1, True))),
                          (b, mu * b + u),
                          (theta, theta - lr * sp.Piecewise((u + mu * b, sp.Eq(nes, 1)), (b, True)))],
                 {b: State(0, "trace", "momentum of the scaled gradient (Optax's trace is −lr × this)")},
                 hyper, LARS_DOC, ("You et al., Large Batch Training of Convolutional Networks, arXiv:1708.03888 "
                                   "(2017)", f"{OX}: lars"))


LARS_DOC = """LARS (You et al. 2017), as optax.lars (trust ratio on every tensor).

    u = g + λθ;  u ← u · η ‖θ‖ / (‖u‖ + ε)  (unscaled if either norm is 0)
    b_t = μ b + u;   θ_t = θ − α b_t   (nesterov: θ − α (u + μ b_t))

lr 1e-2 (Optax has none), weight_decay 0, trust_coefficient 1e-3, eps 0, momentum 0.9,
nesterov False.  Optax keeps the momentum of the lr-scaled update (−α b): the same
trajectory for a constant lr.  pytorch-optimizer's LARS skips 1-D tensors."""


def signsgd() -> Rule:
    return _rule("signsgd", [(theta, theta - lr * sp.sign(g))], {}, {lr: _lr(1e-3)},
                 "signSGD (Bernstein et al. 2018), as optax.sign_sgd: θ_t = θ − α sign(g); sign(0) = 0. lr 1e-3.",
                 SIGN_REFS + (f"{OX}: sign_sgd", f"{PT}: SignSGD(momentum=0)"))


SIGN_REFS = ("Bernstein et al., signSGD: Compressed Optimisation for Non-Convex Problems, ICML 2018",)


def signum() -> Rule:
    mu = sp.Symbol("mu")
    return _rule("signum", [(b, _lerp(b, g, 1 - mu)), (theta, theta - lr * sp.sign(b))],
                 {b: State(0, "momentum_buffer")},
                 {lr: _lr(1e-3), mu: Hyper(0.9, 0.0, 1.0, high_open=True, key="momentum", doc="β, EMA of g")},
                 "Signum (Bernstein et al. 2018), as optax.signum and pytorch-optimizer's SignSGD(momentum>0): "
                 "b_t = β b + (1−β) g; θ_t = θ − α sign(b_t). lr 1e-3, momentum 0.9.",
                 SIGN_REFS + (f"{OX}: signum (beta)", f"{PT}: SignSGD"))


def adafactor_unfactored() -> Rule:
    """Adafactor, unfactored (Shazeer & Stern 2018): v from a decaying β̂2,t, RMS clipping, param scale."""
    dr, dthr, e2 = sp.symbols("d_rate delta_thr eps_scale")
    hyper = {lr: _lr(1e-2, "learning rate α (relative step size ρ; the paper's ρ_t = min(1e-2, 1/√t))"),
             dr: Hyper(0.8, 0.0, key="decay_rate", doc="c: β̂2,t = 1 − t^(−c)"),
             dthr: Hyper(1.0, 0.0, low_open=True, key="clipping_threshold", doc="d, update RMS clipping threshold"),
             eps: _eps(1e-30, "ε1, added to g²"), e2: _eps(1e-3, "ε2, floor of RMS(θ)", key="min_scale"),
             wd: Hyper(0.0, 0.0, key="weight_decay_rate", doc="λ, θ ← θ − λθ (not scaled by α)")}
    beta2t = 1 - t**(-dr)
    return _rule("adafactor_unfactored", [(v, beta2t * v + (1 - beta2t) * (g**2 + eps)), (u, g / sp.sqrt(v)),
                               (u, u / sp.Max(1, tensor_rms(u) / dthr)),
                               (theta, theta - lr * sp.Max(tensor_rms(theta), e2) * u - wd * theta)],
                 {v: State(0, "v")}, hyper, ADAFACTOR_DOC,
                 ("Shazeer & Stern, Adafactor: Adaptive Learning Rates with Sublinear Memory Cost, ICML 2018",
                  f"{OX}: adafactor(factored=False)"))


ADAFACTOR_DOC = """Adafactor without factoring (Shazeer & Stern 2018), as optax.adafactor(factored=False).

    β̂2,t = 1 − t^(−c);   v_t = β̂2,t v + (1 − β̂2,t)(g² + ε1)
    u_t = g / √v_t;   u_t ← u_t / max(1, RMS(u_t)/d)
    θ_t = θ − α max(RMS(θ), ε2) u_t − λθ

lr 1e-2, decay_rate 0.8, clipping_threshold 1.0, eps 1e-30, min_scale 1e-3,
weight_decay_rate 0; no momentum (Optax's default).  RMS over the tensor (two
per-tensor reductions).  The factored form keeps row and column statistics of a
matrix -- reductions along one axis, which symopt's per-tensor and global sums do
not express (see the catalog notes)."""


def adabelief_rectified() -> Rule:
    """AdaBelief with RAdam's rectification (Zhuang et al. 2020), as pytorch-optimizer's AdaBelief(rectify=True)."""
    thr, deg = sp.symbols("delta_thr degenerated")
    hyper = {lr: _lr(1e-3), b1: _beta(0.9, 0, "β1"), b2: _beta(0.999, 1, "β2"),
             eps: _eps(1e-16, "ε, added to s_t every step and to √s_t"), wd: _wd(),
             thr: Hyper(5.0, 0.0, key="n_sma_threshold", doc="ρ_min: rectify once ρ_t ≥ ρ_min"),
             deg: Hyper(True, kind="bool", key="degenerated_to_sgd",
                        doc="before that, SGD with momentum (else no step)")}
    rinf = 2 / (1 - b2) - 1
    rho = rinf - 2 * t * b2**t / _bc(b2)
    # A per-step scalar; Max(0, ·) keeps the hoisted root real before ρ_t reaches ρ_min (branch not taken).
    rt = sp.sqrt(sp.Max(0, _bc(b2) * (rho - 4) * (rho - 2) * rinf / ((rinf - 4) * (rinf - 2) * rho)))
    step = sp.Piecewise((lr * rt / _bc(b1) * m / (sp.sqrt(s) + eps), rho >= thr),
                        (lr / _bc(b1) * m, sp.Eq(deg, 1)), (0, True))
    return _rule("adabelief_rectified", [(m, _lerp(m, g, 1 - b1)), (s, b2 * s + (1 - b2) * (g - m)**2 + eps),
                                         (theta, theta * (1 - lr * wd) - step)],
                 {m: State(0, "exp_avg"), s: State(0, "exp_avg_var")}, hyper, ADABELIEF_RECT_DOC,
                 ("Zhuang et al., AdaBelief Optimizer, NeurIPS 2020, arXiv:2010.07468 (rectified variant)",
                  "Liu et al., On the Variance of the Adaptive Learning Rate and Beyond (RAdam), ICLR 2020",
                  f"{PT}: AdaBelief(rectify=True)"))


ADABELIEF_RECT_DOC = """AdaBelief with rectification (Zhuang et al. 2020; RAdam's r_t), as pytorch-optimizer's
AdaBelief(rectify=True).

    m_t = β1 m + (1−β1) g;   s_t = β2 s + (1−β2)(g − m_t)² + ε
    ρ∞ = 2/(1−β2) − 1,  ρ_t = ρ∞ − 2t β2^t/(1−β2^t)
    ρ_t ≥ ρ_min:  θ_t = θ(1−αλ) − α r_t/(1−β1^t) · m_t/(√s_t + ε),
                  r_t = √((1−β2^t)(ρ_t−4)(ρ_t−2)ρ∞ / ((ρ∞−4)(ρ∞−2)ρ_t))
    otherwise:    θ_t = θ(1−αλ) − α/(1−β1^t) m_t  (degenerated_to_sgd; else no step)

lr 1e-3, betas (0.9, 0.999), eps 1e-16, weight_decay 0, n_sma_threshold 5,
degenerated_to_sgd True.  The unrectified form is the 'adabelief' rule (Optax)."""


def tiger() -> Rule:
    beta = sp.Symbol("beta")
    return _rule("tiger", [(m, _lerp(m, g, 1 - beta)), (theta, theta * (1 - lr * wd) - lr * sp.sign(m))],
                 {m: State(0, "exp_avg")},
                 {lr: _lr(1e-3), beta: Hyper(0.965, 0.0, 1.0, high_open=True, key="beta", doc="β, EMA of g"),
                  wd: _wd(0.01)},
                 "Tiger (Su 2023), as pytorch-optimizer's Tiger: m_t = β m + (1−β) g; θ_t = θ(1−αλ) − α sign(m_t). "
                 "lr 1e-3, beta 0.965, weight_decay 0.01 (decoupled).",
                 ("Su, Tiger: A Tight-fisted Optimizer (2023), https://github.com/bojone/tiger", f"{PT}: Tiger"))


def madgrad() -> Rule:
    """MADGRAD (Defazio & Jelassi 2021): dual averaging with a cube-root denominator."""
    mu = sp.Symbol("mu")
    lam = (lr + eps) * sp.sqrt(t)
    hyper = {lr: _lr(1e-2), mu: Hyper(0.9, 0.0, 1.0, high_open=True, key="momentum", doc="c: θ ← c θ + (1−c) z"),
             wd: Hyper(0.0, 0.0, key="weight_decay", doc="λ, coupled: g ← g + λθ"),
             eps: _eps(1e-6, "ε, added to the cube root and to α")}
    return _rule("madgrad", [(g, g + wd * theta), (G, G + lam * g**2), (s, s + lam * g),
                             (z, x0 - s / (G**sp.Rational(1, 3) + eps)), (theta, mu * theta + (1 - mu) * z),
                             (x0, x0)],  # x0 is read-only state (a rule's state is "updated")
                 {G: State(0, "grad_sum_sq"), s: State(0, "s"), x0: State(theta, "x0", "the initial param")},
                 hyper, MADGRAD_DOC,
                 ("Defazio & Jelassi, Adaptivity without Compromise: A Momentumized, Adaptive, Dual Averaged "
                  "Gradient Method for Stochastic Optimization, JMLR 2022, arXiv:2101.11075", f"{PT}: MADGRAD"))


MADGRAD_DOC = """MADGRAD (Defazio & Jelassi 2021), as the authors' code and pytorch-optimizer's MADGRAD.

    λ_t = (α + ε) √t;   G_t = G + λ_t g²;   s_t = s + λ_t g
    z_t = x0 − s_t / (G_t^{1/3} + ε);   θ_t = c θ + (1 − c) z_t

lr 1e-2 (the paper's), momentum c 0.9, weight_decay 0 (coupled), eps 1e-6 (also added to α,
as the authors' code).  optax.contrib.madgrad computes λ_t in float32 (√ of its int32 count):
~1e-8 relative from the float64 trajectory."""


def diffgrad() -> Rule:
    """diffGrad (Dubey et al. 2019): Adam's step scaled by sigmoid(|Δg|)."""
    hyper = {lr: _lr(1e-3), b1: _beta(0.9, 0, "β1"), b2: _beta(0.999, 1, "β2"), eps: _eps(1e-8), wd: _wd()}
    xi = 1 / (1 + sp.exp(-sp.Abs(gp - g)))
    return _rule("diffgrad", [(m, _lerp(m, g, 1 - b1)), (v, b2 * v + (1 - b2) * g**2),
                              (theta, theta * (1 - lr * wd) - lr * sp.sqrt(_bc(b2)) / _bc(b1) * xi * m
                               / (sp.sqrt(v + PT_SQ_EPS) + eps)), (gp, g)],
                 {m: State(0, "exp_avg"), v: State(0, "exp_avg_sq"), gp: State(0, "previous_grad")}, hyper,
                 "diffGrad (Dubey et al. 2019), as pytorch-optimizer's DiffGrad: ξ = sigmoid(|g_prev − g|); "
                 "θ_t = θ(1−αλ) − α √(1−β2^t)/(1−β1^t) ξ m_t / (√(v_t + 1e-15) + ε); g_prev starts at 0. "
                 "lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.",
                 ("Dubey et al., diffGrad: An Optimization Method for Convolutional Neural Networks, IEEE TNNLS 2019",
                  f"{PT}: DiffGrad"))


def ademamix() -> Rule:
    """AdEMAMix (Pagliardini et al. 2024): Adam plus α times a slow EMA (β3), with warm-ups of α and β3."""
    a, T = sp.symbols("a_mix T_ab3")
    off = sp.Eq(T, 0)
    f = t / sp.Piecewise((T, T > 0), (1, True))        # t/T, never a division by zero when T = 0 (off)
    a_t = sp.Piecewise((a, off), (sp.Min(f * a, a), True))
    l1, l3 = sp.log(b1), sp.log(b3)
    b3_t = sp.Piecewise((b3, off), (sp.Min(sp.exp(l1 * l3 / ((1 - f) * l3 + f * l1)), b3), True))
    hyper = {lr: _lr(1e-3), b1: _beta(0.9, 0, "β1, fast EMA"), b2: _beta(0.999, 1, "β2"),
             b3: _beta(0.9999, 2, "β3, slow EMA"), a: Hyper(5.0, 0.0, key="alpha", doc="α, weight of the slow EMA"),
             T: Hyper(0.0, 0.0, key="t_alpha_beta3", doc="T, warm-up steps of α and β3 (0: none)"),
             eps: _eps(1e-8), wd: _wd(0.0, "λ, coupled weight decay: g ← g + λθ")}
    return _rule("ademamix", [(g, g + wd * theta), (m, _lerp(m, g, 1 - b1)), (v, b2 * v + (1 - b2) * g**2),
                              (m2, _lerp(m2, g, 1 - b3_t)),
                              (theta, theta - lr * (m / _bc(b1) + a_t * m2) / (sp.sqrt(v) / sp.sqrt(_bc(b2)) + eps))],
                 {m: State(0, "exp_avg"), v: State(0, "exp_avg_sq"), m2: State(0, "exp_avg_slow")}, hyper,
                 ADEMAMIX_DOC, ("Pagliardini et al., The AdEMAMix Optimizer: Better, Faster, Older, "
                                "arXiv:2409.03016 (2024)", f"{PT}: AdEMAMix", f"{OX}: contrib.ademamix"))


ADEMAMIX_DOC = """AdEMAMix (Pagliardini et al. 2024), as pytorch-optimizer's AdEMAMix.

    m1 = β1 m1 + (1−β1) g,  v = β2 v + (1−β2) g²,  m2 = β3,t m2 + (1−β3,t) g
    θ_t = θ − α (m1/(1−β1^t) + α_t m2) / (√(v/(1−β2^t)) + ε)
    with T > 0:  α_t = min(tα/T, α),  β3,t = min(exp(ln β1 ln β3 / ((1 − t/T) ln β3 + (t/T) ln β1)), β3)

lr 1e-3, betas (0.9, 0.999, 0.9999), alpha 5, t_alpha_beta3 0 (pytorch-optimizer's None:
no warm-up), eps 1e-8, weight_decay 0 (coupled).  Both warm-ups are per-step scalars."""


def stable_adamw() -> Rule:
    """StableAdamW (Wortsman et al. 2023): AdamW whose step is divided by the RMS of g²/v."""
    hb1 = b1 * (1 - b1**(t - 1)) / _bc(b1)
    hb2 = b2 * (1 - b2**(t - 1)) / _bc(b2)
    rms = sp.Max(1, sp.sqrt(TensorMean(g**2 / sp.Max(v, eps**2))))
    hyper = {lr: _lr(1e-3), b1: _beta(0.9, 0, "β1"), b2: _beta(0.99, 1, "β2"), eps: _eps(1e-8), wd: _wd(1e-2)}
    return _rule("stable_adamw", [(m, _lerp(m, g, 1 - hb1)), (v, hb2 * v + (1 - hb2) * g**2), (q, lr / rms),
                                  (theta, theta * (1 - q * wd) - q * m / (sp.sqrt(v) + eps))],
                 {m: State(0, "exp_avg"), v: State(0, "exp_avg_sq")}, hyper, STABLE_DOC,
                 ("Wortsman et al., Stable and low-precision training for large-scale vision-language models, "
                  "NeurIPS 2023, arXiv:2304.13013", f"{PT}: StableAdamW"), latex={"q": r"\alpha_{t}"})


STABLE_DOC = """StableAdamW (Wortsman et al. 2023), as pytorch-optimizer's StableAdamW.

    β̂_t = β (1 − β^{t−1}) / (1 − β^t)   (so m, v are bias-corrected averages)
    m_t = β̂1 m + (1−β̂1) g,   v_t = β̂2 v + (1−β̂2) g²
    α_t = α / max(1, √mean(g² / max(v_t, ε²)))   (mean over the tensor)
    θ_t = θ (1 − α_t λ) − α_t m_t / (√v_t + ε)

lr 1e-3, betas (0.9, 0.99), eps 1e-8, weight_decay 1e-2.  One per-tensor reduction."""


def fromage() -> Rule:
    mn = sp.Symbol("min_norm")
    ratio = sp.Max(tensor_norm(theta), mn) / sp.Max(tensor_norm(g), mn)
    return _rule("fromage", [(theta, (theta - lr * ratio * g) / sp.sqrt(1 + lr**2))], {},
                 {lr: _lr(1e-2), mn: Hyper(1e-6, 0.0, low_open=True, key="min_norm", doc="floor of both norms")},
                 "Fromage (Bernstein et al. 2020), as optax.fromage: θ_t = (θ − α max(‖θ‖, ε)/max(‖g‖, ε) g) / "
                 "√(1 + α²), norms over the tensor (one reduction pass). lr 1e-2 (the paper's; Optax has none), "
                 "min_norm 1e-6.",
                 ("Bernstein et al., On the distance between two neural networks and the stability of learning, "
                  "NeurIPS 2020, arXiv:2002.03432", f"{OX}: fromage"))


def families() -> list[Family]:
    rules = [adan(), adopt(), laprop(), _adabound(False), _adabound(True), adamod(), qhadam(), qhm(),
             _schedule_free(False), _schedule_free(True), mars_adamw(), cautious_adamw(), cautious_lion(),
             lamb(), lars(), signsgd(), signum(), adafactor_unfactored(), adabelief_rectified(), tiger(), madgrad(),
             diffgrad(), ademamix(), stable_adamw(), fromage()]
    return [Family(r.name, [(sp.true, r)], doc=r.doc, source=_source(r), references=r.references, group="research")
            for r in rules]


def _source(rule: Rule) -> str:
    """Where the rule is defined, for ``symopt list``: 'First author et al. (paper); library'."""
    paper = rule.references[0].split(",")[0]
    libs = list(dict.fromkeys(ref.split(":")[0] for ref in rule.references if ref.startswith((PT, SF, OX))))
    return f"{paper} (paper)" + (f"; {', '.join(libs)}" if libs else "")
