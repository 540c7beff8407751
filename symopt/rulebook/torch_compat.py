"""torch.optim-compatible rules (torch 2.13): ``sgd``, ``adam``, ``adamw``, ``adagrad``,
``rmsprop``, ``adamax``, ``nadam``, ``radam``, ``adadelta``.

Each family is the single-tensor path of ``torch/optim/<name>.py``
(``_single_tensor_<name>``, ``foreach=False``) written as one elementwise update, with
torch's keyword arguments, defaults, valid ranges and state names (``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``, ``momentum_buffer``, ``sum``, ``square_avg``,
``grad_avg``, ``exp_inf``, ``mu_product``, ``acc_delta``).  ``t`` is torch's
``state["step"]`` after its increment (1 at the first update).

Conventions shared by every family (as torch does them):

* ``maximize=True`` negates the gradient first: g ← −g.
* ``weight_decay`` λ adds λθ to the gradient (g ← g + λθ) -- the "L2" form -- except in
  ``adamw`` and with ``decoupled_weight_decay=True`` (``adam``, ``nadam``, ``radam``),
  where the parameter is shrunk first: θ ← θ (1 − γλ).  torch skips the step when
  λ = 0; both forms are then exact no-ops (g + 0·θ = g, θ·1 = θ), so symopt always
  writes them.
* ε is added *outside* the square root (√v̂ + ε) except in ``adadelta``
  (√(v + ε), as torch) -- unlike the source notes' rules (``notes.*``), which put ε
  inside the root.
* Options that add or remove state (``amsgrad``; ``momentum != 0`` in ``sgd`` and
  ``rmsprop``; ``centered``) select separate variant kernels; options that do not
  (``maximize``, ``nesterov``, ``decoupled_weight_decay``) are bool hyperparameters
  read through ``Piecewise``.  Hyperparameters are kernel arguments either way.
* Exponential moving averages are written as torch computes them:
  ``exp_avg.lerp_(g, 1 − β1)`` is m ← m + (1 − β1)(g − m), and
  ``v.mul_(β2).addcmul_(g, g, value=1 − β2)`` is v ← β2 v + (1 − β2) g².

torch's ``foreach``, ``fused``, ``capturable`` and ``differentiable`` select
implementations, not math, and are not arguments here.
"""

from __future__ import annotations

import sympy as sp

from .metadata import Hyper, State, t
from .rule import Family, Rule

# -- symbols ---------------------------------------------------------------------------
theta, g = sp.symbols("theta g")
# hyperparameters (torch's keyword names)
lr, momentum, dampening, weight_decay = sp.symbols("lr momentum dampening weight_decay")
beta1, beta2, eps = sp.symbols("beta1 beta2 eps")
lr_decay, initial_accumulator_value = sp.symbols("lr_decay initial_accumulator_value")
alpha, rho, momentum_decay = sp.symbols("alpha rho momentum_decay")
nesterov, maximize, decoupled, amsgrad, centered = sp.symbols(
    "nesterov maximize decoupled_weight_decay amsgrad centered")
# state
b, m, v, v_max, G, g_avg, u, mu_product = sp.symbols("b m v v_max G g_avg u mu_product")
# temporaries
m_hat, denom, delta, mu_t, mu_next, rho_inf, rho_t, r_t = sp.symbols(
    "m_hat denom delta mu_t mu_next rho_inf rho_t r_t")

_SRC = "torch.optim 2.13"
_GROUP = "torch"
_LATEX = {
    "lr": r"\gamma", "momentum": r"\mu", "dampening": r"\tau", "weight_decay": r"\lambda",
    "beta1": r"\beta_{1}", "beta2": r"\beta_{2}", "eps": r"\epsilon", "lr_decay": r"\eta",
    "initial_accumulator_value": r"G_{0}", "alpha": r"\alpha", "rho": r"\rho", "momentum_decay": r"\psi",
    "nesterov": r"\text{nesterov}", "maximize": r"\text{maximize}",
    "decoupled_weight_decay": r"\text{decoupled}",
    "v_max": r"v^{\max}", "g_avg": r"g^{\mathrm{ave}}", "mu_product": r"\Pi",
    "m_hat": r"\hat{m}_{t}", "denom": r"d_{t}", "delta": r"\Delta_{t}", "mu_t": r"\mu_{t}",
    "mu_next": r"\mu_{t+1}", "rho_inf": r"\rho_{\infty}", "rho_t": r"\rho_{t}", "r_t": r"r_{t}",
}


def _doc_url(name: str) -> str:
    return f"https://pytorch.org/docs/2.13/generated/torch.optim.{name}.html (torch/optim/{name.lower()}.py)"


# -- hyperparameters -------------------------------------------------------------------
def _lr(default: float) -> Hyper:
    return Hyper(default, 0.0, key="lr", doc="learning rate γ (torch: 'Invalid learning rate' when < 0)")


def _eps(default: float, where: str = "added to the denominator outside the square root") -> Hyper:
    return Hyper(default, 0.0, key="eps", doc=f"ε, {where}")


def _wd(default: float = 0.0, doc: str = "λ, weight decay (L2 penalty: g ← g + λθ)") -> Hyper:
    return Hyper(default, 0.0, key="weight_decay", doc=doc)


def _betas() -> dict:
    return {
        beta1: Hyper(0.9, 0.0, 1.0, high_open=True, key="betas", index=0,
                     doc="β1, decay of the first moment (torch: 0 <= betas[0] < 1)"),
        beta2: Hyper(0.999, 0.0, 1.0, high_open=True, key="betas", index=1,
                     doc="β2, decay of the second moment (torch: 0 <= betas[1] < 1)"),
    }


MAXIMIZE = Hyper(False, kind="bool", doc="maximize the objective (g ← −g)")
DECOUPLED = Hyper(False, kind="bool",
                  doc="decoupled weight decay: θ ← θ(1 − γλ) instead of g ← g + λθ (AdamW-style)")


def _rule(name, doc, refs, **kw):
    return Rule(name, param=theta, grad=g, source=_SRC, references=refs, latex_names=_LATEX, doc=doc, **kw)


def _is(flag) -> sp.Basic:
    """The condition "bool hyperparameter ``flag`` is True" (bools are 1/0 in conditions)."""
    return sp.Eq(flag, 1)


def _maximize() -> tuple:
    return (g, sp.Piecewise((-g, _is(maximize)), (g, True)))


def _l2() -> tuple:
    return (g, g + weight_decay * theta)


def _weight_decay_either() -> list:
    """torch's ``decoupled_weight_decay`` switch: L2 on the gradient, or shrink the param."""
    return [(g, sp.Piecewise((g, _is(decoupled)), (g + weight_decay * theta, True))),
            (theta, sp.Piecewise((theta * (1 - lr * weight_decay), _is(decoupled)), (theta, True)))]


def _ema_lerp(x, target, beta):
    """``x.lerp_(target, 1 − beta)``: x + (1 − β)(target − x)."""
    return x + (1 - beta) * (target - x)


def _ema_sq(x, beta):
    """``x.mul_(beta).addcmul_(g, g, value=1 − beta)``: β x + (1 − β) g²."""
    return beta * x + (1 - beta) * g**2


# =============================================================================
# SGD
# =============================================================================
SGD_REFS = (_doc_url("SGD"),
            "Sutskever et al., On the importance of initialization and momentum in deep learning, ICML 2013")
SGD_DOC = """SGD with momentum, as torch.optim.SGD (torch 2.13).

    g_t ← −g_t                       if maximize
    g_t ← g_t + λ θ_{t-1}
    b_t = g_t                         if t = 1          (momentum != 0 only)
        = μ b_{t-1} + (1 − τ) g_t     otherwise
    g_t ← g_t + μ b_t  if nesterov, else  b_t          (momentum != 0 only)
    θ_t = θ_{t-1} − γ g_t

γ = lr = 1e-3, μ = momentum = 0, τ = dampening = 0, λ = weight_decay = 0,
nesterov = False, maximize = False.  momentum != 0 selects the variant with the
momentum_buffer state b.  As torch: the first step copies the gradient into the
buffer without dampening; nesterov requires momentum > 0 and dampening = 0.
(torch's SGD has no step counter; t is symopt's.)"""


def _sgd_hyper(with_momentum: bool) -> dict:
    h = {lr: _lr(1e-3), weight_decay: _wd(), maximize: MAXIMIZE}
    if with_momentum:
        h.update({
            momentum: Hyper(0.0, 0.0, key="momentum", doc="μ, momentum factor (torch: 'Invalid momentum value' when < 0)"),
            dampening: Hyper(0.0, key="dampening", doc="τ, dampening of the gradient in the momentum buffer"),
            nesterov: Hyper(False, kind="bool", doc="Nesterov momentum (requires momentum > 0, dampening = 0)"),
        })
    return h


def sgd() -> Rule:
    """Plain SGD (momentum = 0): θ_t = θ_{t-1} − γ (g_t + λ θ_{t-1})."""
    return _rule("sgd", SGD_DOC, SGD_REFS, hyper=_sgd_hyper(False),
                 updates=[_maximize(), _l2(), (theta, theta - lr * g)])


def sgd_momentum() -> Rule:
    """SGD with a momentum buffer: b_t = μ b_{t-1} + (1−τ) g_t (b_1 = g_1); θ_t = θ_{t-1} − γ b_t."""
    state = {b: State(0, key="momentum_buffer", doc="momentum buffer (torch creates it as g_1 at step 1)")}
    return _rule("sgd.momentum", SGD_DOC, SGD_REFS, state=state, hyper=_sgd_hyper(True),
                 updates=[_maximize(), _l2(),
                          (b, sp.Piecewise((g, sp.Eq(t, 1)), (momentum * b + (1 - dampening) * g, True))),
                          (g, sp.Piecewise((g + momentum * b, _is(nesterov)), (b, True))),
                          (theta, theta - lr * g)])


def sgd_family() -> Family:
    return Family(
        "sgd", [(sp.Eq(momentum, 0), sgd()), (sp.Ne(momentum, 0), sgd_momentum())],
        constraints=[(sp.Or(sp.Ne(nesterov, 1), sp.And(sp.Gt(momentum, 0), sp.Eq(dampening, 0))),
                      "Nesterov momentum requires a momentum and zero dampening")],
        doc=SGD_DOC, source=_SRC, references=SGD_REFS, group=_GROUP)


# =============================================================================
# Adam / AdamW
# =============================================================================
ADAM_REFS = (_doc_url("Adam"),
             "Kingma & Ba, Adam: A Method for Stochastic Optimization, ICLR 2015, arXiv:1412.6980",
             "Reddi et al., On the Convergence of Adam and Beyond (AMSGrad), ICLR 2018")
ADAMW_REFS = (_doc_url("AdamW"),
              "Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019, arXiv:1711.05101",
              "Reddi et al., On the Convergence of Adam and Beyond (AMSGrad), ICLR 2018")
_ADAM_BODY = """    m_t = m_{t-1} + (1 − β1)(g_t − m_{t-1})
    v_t = β2 v_{t-1} + (1 − β2) g_t²
    v^max_t = max(v^max_{t-1}, v_t)                  (amsgrad only; v̄ = v^max_t, else v̄ = v_t)
    θ_t ← θ_t − γ/(1 − β1^t) · m_t / (√v̄ / √(1 − β2^t) + ε)"""
ADAM_DOC = f"""Adam, as torch.optim.Adam (torch 2.13).

    g_t ← −g_t                                      if maximize
    g_t ← g_t + λ θ_{{t-1}}                           unless decoupled_weight_decay
    θ_t = θ_{{t-1}} (1 − γλ)                           if decoupled_weight_decay (AdamW)
{_ADAM_BODY}

γ = lr = 1e-3, (β1, β2) = betas = (0.9, 0.999), ε = eps = 1e-8,
λ = weight_decay = 0, amsgrad = False, maximize = False,
decoupled_weight_decay = False.  amsgrad=True selects the variant with the
max_exp_avg_sq state.  Convention: ε is added outside the square root, after the
bias correction of √v (as torch; the source notes put it inside)."""
ADAMW_DOC = f"""AdamW, as torch.optim.AdamW (torch 2.13): Adam with decoupled weight decay.

    g_t ← −g_t                                      if maximize
    θ_t = θ_{{t-1}} (1 − γλ)
{_ADAM_BODY}

γ = lr = 1e-3, (β1, β2) = betas = (0.9, 0.999), ε = eps = 1e-8,
λ = weight_decay = 1e-2, amsgrad = False, maximize = False.  As torch, the decay
multiplies by the learning rate (θ(1 − γλ)), the paper's schedule multiplier is
not modelled.  Convention: ε outside the square root (as torch)."""


def _adam_rule(name: str, doc: str, refs, *, with_amsgrad: bool, adamw: bool) -> Rule:
    hyper = {lr: _lr(1e-3), **_betas(), eps: _eps(1e-8),
             weight_decay: _wd(1e-2, "λ, decoupled weight decay: θ ← θ(1 − γλ)") if adamw else _wd(),
             maximize: MAXIMIZE}
    if not adamw:
        hyper[decoupled] = DECOUPLED
    state = {m: State(0, key="exp_avg", doc="first moment"), v: State(0, key="exp_avg_sq", doc="second moment")}
    if with_amsgrad:
        state[v_max] = State(0, key="max_exp_avg_sq", doc="running maximum of the second moment")
    updates = [_maximize()]
    updates += [(theta, theta * (1 - lr * weight_decay))] if adamw else _weight_decay_either()
    updates += [(m, _ema_lerp(m, g, beta1)), (v, _ema_sq(v, beta2))]
    if with_amsgrad:
        updates.append((v_max, sp.Max(v_max, v)))
    vbar = v_max if with_amsgrad else v
    updates.append((theta, theta - lr / (1 - beta1**t) * m / (sp.sqrt(vbar) / sp.sqrt(1 - beta2**t) + eps)))
    return _rule(name, doc, refs, state=state, hyper=hyper, updates=updates)


AMSGRAD = Hyper(False, kind="bool", doc="AMSGrad: normalize by the running maximum of v (adds max_exp_avg_sq)")


def adam_family() -> Family:
    return Family(
        "adam", [(sp.Ne(amsgrad, 1), _adam_rule("adam", ADAM_DOC, ADAM_REFS, with_amsgrad=False, adamw=False)),
                 (_is(amsgrad), _adam_rule("adam.amsgrad", ADAM_DOC, ADAM_REFS, with_amsgrad=True, adamw=False))],
        options={amsgrad: AMSGRAD}, doc=ADAM_DOC, source=_SRC, references=ADAM_REFS, group=_GROUP)


def adamw_family() -> Family:
    return Family(
        "adamw", [(sp.Ne(amsgrad, 1), _adam_rule("adamw", ADAMW_DOC, ADAMW_REFS, with_amsgrad=False, adamw=True)),
                  (_is(amsgrad), _adam_rule("adamw.amsgrad", ADAMW_DOC, ADAMW_REFS, with_amsgrad=True, adamw=True))],
        options={amsgrad: AMSGRAD}, doc=ADAMW_DOC, source=_SRC, references=ADAMW_REFS, group=_GROUP)


# =============================================================================
# Adagrad
# =============================================================================
ADAGRAD_REFS = (_doc_url("Adagrad"),
                "Duchi et al., Adaptive Subgradient Methods for Online Learning and Stochastic Optimization, "
                "JMLR 12 (2011)")
ADAGRAD_DOC = """Adagrad, as torch.optim.Adagrad (torch 2.13).

    g_t ← −g_t                    if maximize
    g_t ← g_t + λ θ_{t-1}
    G_t = G_{t-1} + g_t²          (G_0 = initial_accumulator_value)
    θ_t = θ_{t-1} − γ / (1 + (t − 1) η) · g_t / (√G_t + ε)

γ = lr = 1e-2, η = lr_decay = 0, λ = weight_decay = 0,
G_0 = initial_accumulator_value = 0, ε = eps = 1e-10, maximize = False.
State: sum = G.  Convention: ε outside the square root (as torch; the source
notes' Adagrad puts it inside)."""


def adagrad() -> Rule:
    """Adagrad: G_t = G_{t-1} + g_t²; θ_t = θ_{t-1} − γ/(1 + (t−1)η) · g_t/(√G_t + ε)."""
    hyper = {lr: _lr(1e-2), lr_decay: Hyper(0.0, 0.0, key="lr_decay", doc="η, learning rate decay"),
             weight_decay: _wd(),
             initial_accumulator_value: Hyper(0.0, 0.0, key="initial_accumulator_value",
                                              doc="G_0, initial value of the sum of squared gradients"),
             eps: _eps(1e-10), maximize: MAXIMIZE}
    state = {G: State(initial_accumulator_value, key="sum", doc="sum of squared gradients")}
    return _rule("adagrad", ADAGRAD_DOC, ADAGRAD_REFS, state=state, hyper=hyper,
                 updates=[_maximize(), _l2(), (G, G + g**2),
                          (theta, theta - lr / (1 + (t - 1) * lr_decay) * g / (sp.sqrt(G) + eps))])


# =============================================================================
# RMSprop
# =============================================================================
RMSPROP_REFS = (_doc_url("RMSprop"),
                "Hinton, Neural Networks for Machine Learning, lecture 6e (2012)",
                "Graves, Generating Sequences With Recurrent Neural Networks, arXiv:1308.0850 (centered)")
RMSPROP_DOC = """RMSprop, as torch.optim.RMSprop (torch 2.13).

    g_t ← −g_t                                 if maximize
    g_t ← g_t + λ θ_{t-1}
    v_t = α v_{t-1} + (1 − α) g_t²
    g^ave_t = g^ave_{t-1} + (1 − α)(g_t − g^ave_{t-1})        (centered only)
    d_t = √(v_t − (g^ave_t)²) + ε   if centered, else  √v_t + ε
    b_t = μ b_{t-1} + g_t / d_t,  θ_t = θ_{t-1} − γ b_t      if momentum != 0
    θ_t = θ_{t-1} − γ g_t / d_t                              otherwise

γ = lr = 1e-2, α = alpha = 0.99, ε = eps = 1e-8, λ = weight_decay = 0,
μ = momentum = 0, centered = False, maximize = False.  centered and
momentum != 0 select the variants with the grad_avg and momentum_buffer states
(all start at 0); square_avg = v.  Convention: ε outside the square root (as
torch; the source notes' RMSProp puts it inside and calls α γ)."""


def _rmsprop_rule(with_centered: bool, with_momentum: bool) -> Rule:
    hyper = {lr: _lr(1e-2),
             alpha: Hyper(0.99, 0.0, key="alpha", doc="α, smoothing constant (torch: 'Invalid alpha value' when < 0)"),
             eps: _eps(1e-8), weight_decay: _wd(), maximize: MAXIMIZE,
             momentum: Hyper(0.0, 0.0, key="momentum", doc="μ, momentum factor")}
    state = {v: State(0, key="square_avg", doc="moving average of g²")}
    updates = [_maximize(), _l2(), (v, _ema_sq(v, alpha))]
    if with_centered:
        state[g_avg] = State(0, key="grad_avg", doc="moving average of g")
        updates += [(g_avg, _ema_lerp(g_avg, g, alpha)), (denom, sp.sqrt(v - g_avg**2) + eps)]
    else:
        updates.append((denom, sp.sqrt(v) + eps))
    if with_momentum:
        state[b] = State(0, key="momentum_buffer", doc="momentum buffer")
        updates += [(b, momentum * b + g / denom), (theta, theta - lr * b)]
    else:
        updates.append((theta, theta - lr * g / denom))
    name = "rmsprop" + ("." if with_centered or with_momentum else "") + "_".join(
        [x for x, on in (("centered", with_centered), ("momentum", with_momentum)) if on])
    return _rule(name, RMSPROP_DOC, RMSPROP_REFS, state=state, hyper=hyper, updates=updates)


def rmsprop_family() -> Family:
    plain, mom = sp.Eq(momentum, 0), sp.Ne(momentum, 0)
    flat, cent = sp.Ne(centered, 1), _is(centered)
    return Family(
        "rmsprop",
        [(sp.And(flat, plain), _rmsprop_rule(False, False)), (sp.And(flat, mom), _rmsprop_rule(False, True)),
         (sp.And(cent, plain), _rmsprop_rule(True, False)), (sp.And(cent, mom), _rmsprop_rule(True, True))],
        options={centered: Hyper(False, kind="bool",
                                 doc="centered RMSprop: normalize by the estimated variance (adds grad_avg)")},
        doc=RMSPROP_DOC, source=_SRC, references=RMSPROP_REFS, group=_GROUP)


# =============================================================================
# Adamax
# =============================================================================
ADAMAX_REFS = (_doc_url("Adamax"),
               "Kingma & Ba, Adam: A Method for Stochastic Optimization, ICLR 2015, section 7.1")
ADAMAX_DOC = """Adamax, as torch.optim.Adamax (torch 2.13).

    g_t ← −g_t                            if maximize
    g_t ← g_t + λ θ_{t-1}
    m_t = m_{t-1} + (1 − β1)(g_t − m_{t-1})
    u_t = max(β2 u_{t-1}, |g_t| + ε)
    θ_t = θ_{t-1} − γ/(1 − β1^t) · m_t / u_t

γ = lr = 2e-3, (β1, β2) = betas = (0.9, 0.999), ε = eps = 1e-8,
λ = weight_decay = 0, maximize = False.  State: exp_avg = m, exp_inf = u (both 0).
Convention: as torch, ε is added to |g| inside the max (the paper has no ε)."""


def adamax() -> Rule:
    """Adamax: u_t = max(β2 u_{t-1}, |g_t| + ε); θ_t = θ_{t-1} − γ/(1−β1^t) · m_t/u_t."""
    hyper = {lr: _lr(2e-3), **_betas(), eps: _eps(1e-8, "added to |g| inside the max"),
             weight_decay: _wd(), maximize: MAXIMIZE}
    state = {m: State(0, key="exp_avg", doc="first moment"),
             u: State(0, key="exp_inf", doc="exponentially weighted infinity norm")}
    return _rule("adamax", ADAMAX_DOC, ADAMAX_REFS, state=state, hyper=hyper,
                 updates=[_maximize(), _l2(), (m, _ema_lerp(m, g, beta1)),
                          (u, sp.Max(beta2 * u, sp.Abs(g) + eps)),
                          (theta, theta - lr / (1 - beta1**t) * m / u)])


# =============================================================================
# NAdam
# =============================================================================
NADAM_REFS = (_doc_url("NAdam"),
              "Dozat, Incorporating Nesterov Momentum into Adam, ICLR 2016 workshop")
NADAM_DOC = """NAdam, as torch.optim.NAdam (torch 2.13).

    g_t ← −g_t                                      if maximize
    g_t ← g_t + λ θ_{t-1}                           unless decoupled_weight_decay
    θ_t = θ_{t-1} (1 − γλ)                           if decoupled_weight_decay
    μ_t = β1 (1 − ½ · 0.96^{t ψ}),   μ_{t+1} = β1 (1 − ½ · 0.96^{(t+1) ψ})
    Π_t = Π_{t-1} μ_t                                (Π_0 = 1: mu_product)
    m_t = m_{t-1} + (1 − β1)(g_t − m_{t-1})
    v_t = β2 v_{t-1} + (1 − β2) g_t²
    d_t = √(v_t / (1 − β2^t)) + ε
    θ_t ← θ_t − γ (1 − μ_t)/(1 − Π_t) · g_t/d_t − γ μ_{t+1}/(1 − Π_t μ_{t+1}) · m_t/d_t

γ = lr = 2e-3, (β1, β2) = betas = (0.9, 0.999), ε = eps = 1e-8,
λ = weight_decay = 0, ψ = momentum_decay = 4e-3, decoupled_weight_decay = False,
maximize = False.  Π = mu_product is the product of μ_1 … μ_t.  It has no closed
form in t (0.96^{kψ} is not geometric in the factors 1 − ½·0.96^{kψ}) and it
depends on past values of β1 and ψ, so it is state, as in torch: torch keeps
it as one scalar tensor per parameter (in torch's default dtype); symopt keeps
one value per element (every element holds the same number, in the param's
dtype).  Convention: ε outside the square root (as torch)."""


def nadam() -> Rule:
    """NAdam with torch's μ schedule and mu_product state."""
    hyper = {lr: _lr(2e-3), **_betas(), eps: _eps(1e-8), weight_decay: _wd(),
             momentum_decay: Hyper(4e-3, 0.0, key="momentum_decay", doc="ψ, momentum decay of the μ_t schedule"),
             decoupled: DECOUPLED, maximize: MAXIMIZE}
    state = {m: State(0, key="exp_avg", doc="first moment"), v: State(0, key="exp_avg_sq", doc="second moment"),
             mu_product: State(1, key="mu_product", doc="product of the momentum coefficients μ_1 … μ_t")}
    half, base = sp.S.Half, sp.Float(0.96)
    return _rule("nadam", NADAM_DOC, NADAM_REFS, state=state, hyper=hyper,
                 updates=[_maximize(), *_weight_decay_either(),
                          (mu_t, beta1 * (1 - half * base ** (t * momentum_decay))),
                          (mu_next, beta1 * (1 - half * base ** ((t + 1) * momentum_decay))),
                          (mu_product, mu_product * mu_t),
                          (m, _ema_lerp(m, g, beta1)), (v, _ema_sq(v, beta2)),
                          (denom, sp.sqrt(v / (1 - beta2**t)) + eps),
                          (theta, theta - lr * (1 - mu_t) / (1 - mu_product) * g / denom
                           - lr * mu_next / (1 - mu_product * mu_next) * m / denom)])


# =============================================================================
# RAdam
# =============================================================================
RADAM_REFS = (_doc_url("RAdam"),
              "Liu et al., On the Variance of the Adaptive Learning Rate and Beyond, ICLR 2020, arXiv:1908.03265")
RADAM_DOC = """RAdam, as torch.optim.RAdam (torch 2.13).

    g_t ← −g_t                                      if maximize
    g_t ← g_t + λ θ_{t-1}                           unless decoupled_weight_decay
    θ_t = θ_{t-1} (1 − γλ)                           if decoupled_weight_decay
    m_t = m_{t-1} + (1 − β1)(g_t − m_{t-1})
    v_t = β2 v_{t-1} + (1 − β2) g_t²
    m̂_t = m_t / (1 − β1^t)
    ρ_∞ = 2/(1 − β2) − 1,   ρ_t = ρ_∞ − 2 t β2^t / (1 − β2^t)
    r_t = √((ρ_t − 4)(ρ_t − 2) ρ_∞ / ((ρ_∞ − 4)(ρ_∞ − 2) ρ_t))     if ρ_t > 5
    θ_t ← θ_t − γ m̂_t r_t √(1 − β2^t) / (√v_t + ε)   if ρ_t > 5,   θ_t − γ m̂_t  otherwise

γ = lr = 1e-3, (β1, β2) = betas = (0.9, 0.999), ε = eps = 1e-8,
λ = weight_decay = 0, decoupled_weight_decay = False, maximize = False.
r_t and the branch depend only on t and β2: they are per-step scalars (r_t is
set to 0 when ρ_t ≤ 5, where it is unused, so its square root is never taken of a
negative number).  Convention: ε outside the square root (as torch)."""


def radam() -> Rule:
    """RAdam: rectified Adam step when ρ_t > 5, bias-corrected momentum step otherwise."""
    hyper = {lr: _lr(1e-3), **_betas(), eps: _eps(1e-8), weight_decay: _wd(),
             decoupled: DECOUPLED, maximize: MAXIMIZE}
    state = {m: State(0, key="exp_avg", doc="first moment"), v: State(0, key="exp_avg_sq", doc="second moment")}
    rect = sp.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
    return _rule("radam", RADAM_DOC, RADAM_REFS, state=state, hyper=hyper,
                 updates=[_maximize(), *_weight_decay_either(),
                          (m, _ema_lerp(m, g, beta1)), (v, _ema_sq(v, beta2)),
                          (m_hat, m / (1 - beta1**t)),
                          (rho_inf, 2 / (1 - beta2) - 1),
                          (rho_t, rho_inf - 2 * t * beta2**t / (1 - beta2**t)),
                          (r_t, sp.Piecewise((rect, rho_t > 5), (0, True))),
                          (theta, sp.Piecewise(
                              (theta - m_hat * lr * sp.sqrt(1 - beta2**t) / (sp.sqrt(v) + eps) * r_t, rho_t > 5),
                              (theta - m_hat * lr, True)))])


# =============================================================================
# Adadelta
# =============================================================================
ADADELTA_REFS = (_doc_url("Adadelta"),
                 "Zeiler, ADADELTA: An Adaptive Learning Rate Method, arXiv:1212.5701 (2012)")
ADADELTA_DOC = """Adadelta, as torch.optim.Adadelta (torch 2.13).

    g_t ← −g_t                          if maximize
    g_t ← g_t + λ θ_{t-1}
    v_t = ρ v_{t-1} + (1 − ρ) g_t²
    Δ_t = √(u_{t-1} + ε) / √(v_t + ε) · g_t
    u_t = ρ u_{t-1} + (1 − ρ) Δ_t²
    θ_t = θ_{t-1} − γ Δ_t

γ = lr = 1.0, ρ = rho = 0.9 (0 <= ρ <= 1), ε = eps = 1e-6, λ = weight_decay = 0,
maximize = False.  State: square_avg = v, acc_delta = u (both 0).  Convention:
here ε is inside both square roots, as in torch and the paper."""


def adadelta() -> Rule:
    """Adadelta: Δ_t = √(u + ε)/√(v_t + ε) · g_t; θ_t = θ_{t-1} − γ Δ_t."""
    hyper = {lr: _lr(1.0), rho: Hyper(0.9, 0.0, 1.0, key="rho", doc="ρ, decay of both running averages"),
             eps: _eps(1e-6, "added inside both square roots"), weight_decay: _wd(), maximize: MAXIMIZE}
    state = {v: State(0, key="square_avg", doc="moving average of g²"),
             u: State(0, key="acc_delta", doc="moving average of Δ²")}
    return _rule("adadelta", ADADELTA_DOC, ADADELTA_REFS, state=state, hyper=hyper,
                 updates=[_maximize(), _l2(), (v, _ema_sq(v, rho)),
                          (delta, sp.sqrt(u + eps) / sp.sqrt(v + eps) * g),
                          (u, rho * u + (1 - rho) * delta**2),
                          (theta, theta - lr * delta)])


def _single(rule: Rule, refs) -> Family:
    return Family(rule.name, [(sp.true, rule)], doc=rule.doc, source=_SRC, references=refs, group=_GROUP)


def families() -> list[Family]:
    return [
        sgd_family(),
        adam_family(),
        adamw_family(),
        _single(adagrad(), ADAGRAD_REFS),
        rmsprop_family(),
        _single(adamax(), ADAMAX_REFS),
        _single(nadam(), NADAM_REFS),
        _single(radam(), RADAM_REFS),
        _single(adadelta(), ADADELTA_REFS),
    ]
