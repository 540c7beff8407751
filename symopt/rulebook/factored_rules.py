"""Factored rules: ``adafactor`` (``torch.optim.Adafactor``, torch 2.13) and ``adafactor_optax``
(``optax.adafactor``, Optax 0.2.8).

Adafactor (Shazeer & Stern 2018) keeps the row and column means of g² for a matrix and
estimates the second moment as their outer product over the mean of the rows
(:mod:`.factored`).  torch 2.13's algorithm, step t (``_single_tensor_adafactor``)::

    β̂ = t^{β2_decay};   ρ_t = min(γ, 1/√t);   α = max(ε2, RMS(θ)) ρ_t      (θ before the decay)
    θ ← θ (1 − γλ)
    factored (≥ 2-D, the last two axes):
        R ← R + β̂ (mean_j g² − R);   C ← C + β̂ (mean_i g² − C)
        v̂ = R C / max(mean_i R, ε1)
    else:  V ← V + β̂ (g² − V);   v̂ = V
    U = g / √max(v̂, ε1²);   θ ← θ − α / max(1, RMS(U)/d) · U

with g ← −g under ``maximize``; ε1 = the dtype's machine epsilon when ``eps=(None, ε2)``.
Symbols: γ ``lr``, λ ``weight_decay``, β2_decay, (ε1, ε2) ``eps``, d ``d``.
"""

from __future__ import annotations

import sympy as sp

from .factored import ColMean, RowMean, factored, machine_eps, min_dim_to_factor
from .metadata import NONE_VALUE, Hyper, State, t
from .reduction import tensor_rms
from .rule import Family, Rule

theta, g, R, C, V, A, vhat, U = sp.symbols("theta g R C V A vhat U")
lr, beta2_decay, eps1, eps2, d, weight_decay, maximize = sp.symbols(
    "lr beta2_decay eps1 eps2 d weight_decay maximize")

_SRC = "torch.optim 2.13"
_LATEX = {"theta": r"\theta", "lr": r"\gamma", "weight_decay": r"\lambda", "beta2_decay": r"\beta_{2,\mathrm{decay}}",
          "eps1": r"\epsilon_1", "eps2": r"\epsilon_2", "vhat": r"\hat{v}", "A": r"\alpha", "maximize":
          r"\text{maximize}"}


def adafactor() -> Rule:
    beta_t = t**beta2_decay
    e1 = sp.Piecewise((machine_eps, eps1 < 0), (eps1, True))   # eps=(None, ...): the dtype's epsilon
    grad = sp.Piecewise((-g, sp.Eq(maximize, 1)), (g, True))
    return Rule(
        "adafactor", param=theta, grad=g, source=_SRC, latex_names=_LATEX,
        doc="Adafactor, factored for params of two or more dimensions (torch.optim.Adafactor).",
        references=("https://docs.pytorch.org/docs/2.13/generated/torch.optim.Adafactor.html",
                    "Shazeer & Stern, Adafactor: Adaptive Learning Rates with Sublinear Memory Cost, ICML 2018"),
        state={R: State(0, key="row_var", shape="row", doc="row means of g² (…, m, 1)"),
               C: State(0, key="col_var", shape="col", doc="column means of g² (…, 1, n)"),
               V: State(0, key="variance", shape="vector", doc="g² of a param of fewer than two dimensions")},
        hyper={
            lr: Hyper(1e-2, low=0.0, doc="γ, learning rate (the relative step is min(γ, 1/√t))"),
            beta2_decay: Hyper(-0.8, high=0.0, doc="the second-moment weight of step t is t^β2_decay"),
            eps1: Hyper(NONE_VALUE, low=0.0, key="eps", index=0, kind="optional",
                        doc="ε1, floor of the variance estimate (None: the dtype's machine epsilon)"),
            eps2: Hyper(1e-3, low=0.0, key="eps", index=1, doc="ε2, floor of RMS(θ) in the step size"),
            d: Hyper(1.0, low=1.0, doc="d, clipping threshold of RMS(U)"),
            weight_decay: Hyper(0.0, low=0.0, doc="λ, decoupled weight decay: θ ← θ(1 − γλ)"),
            maximize: Hyper(False, kind="bool", doc="maximize the objective (g ← −g)"),
        },
        updates=[
            (A, sp.Max(eps2, tensor_rms(theta)) * sp.Min(lr, 1 / sp.sqrt(t))),
            (theta, theta * (1 - lr * weight_decay)),
            (R, R + beta_t * (RowMean(g**2) - R)),
            (C, C + beta_t * (ColMean(g**2) - C)),
            (V, V + beta_t * (g**2 - V)),
            (vhat, sp.Piecewise((R * C / sp.Max(ColMean(R), e1), factored), (V, True))),
            (U, grad / sp.sqrt(sp.Max(vhat, e1**2))),
            (theta, theta - A / sp.Max(1, tensor_rms(U) / d) * U),
        ],
    )


_OX = "optax 0.2.8"
dr, doff, scale, clip, wdr, mom = sp.symbols("d_rate decay_offset param_scale delta_thr lambda_w momentum")
M = sp.Symbol("M")


def adafactor_optax(momentum: bool = False) -> Rule:
    """``optax.adafactor`` (factored=True): see :data:`ADAFACTOR_OPTAX_DOC`; ``momentum`` the variant
    with Optax's ``ema(momentum, debias=False)`` of the scaled update (state ``ema``)."""
    beta = 1 - (t - doff)**(-dr)                       # Optax's decay_rate_fn(count − offset), t = count + 1
    g2 = g**2 + eps1
    u = sp.Piecewise((g * (R / ColMean(R))**sp.Rational(-1, 2) * C**sp.Rational(-1, 2), factored),
                     (g / sp.sqrt(V), True))
    clipped = sp.Piecewise((U, clip < 0), (U / sp.Max(1, tensor_rms(U) / clip), True))   # clip_by_block_rms
    scaled = sp.Piecewise((lr * sp.Max(tensor_rms(theta), sp.Float(1e-3)) * U, sp.Eq(scale, 1)), (lr * U, True))
    decay = sp.Piecewise((0, wdr < 0), (wdr, True))
    state = {R: State(0, key="v_row", shape="row", doc="row means of g² + ε (the column axis kept as 1)"),
             C: State(0, key="v_col", shape="col", doc="column means of g² + ε (the row axis kept as 1)"),
             V: State(0, key="v", shape="vector", doc="g² + ε of a param that is not factored")}
    if momentum:    # optax.ema(momentum, debias=False) after the parameter scale, before the weight decay
        state[M] = State(0, key="ema", doc="exponential moving average of the scaled update")
        step = [(M, mom * M + (1 - mom) * scaled), (theta, theta - M - decay * theta)]
    else:
        step = [(theta, theta - scaled - decay * theta)]
    return Rule(
        "adafactor_optax.momentum" if momentum else "adafactor_optax", param=theta, grad=g, source=_OX,
        latex_names={**_LATEX, "d_rate": "c", "delta_thr": "d", "lambda_w": r"\lambda", "momentum": r"\mu"},
        doc=ADAFACTOR_OPTAX_DOC,
        references=("Shazeer & Stern, Adafactor: Adaptive Learning Rates with Sublinear Memory Cost, ICML 2018",
                    f"{_OX}: adafactor (factored=True)"),
        state=state,
        hyper={
            lr: Hyper(1e-2, low=0.0, doc="α, learning rate (Optax's learning_rate)"),
            min_dim_to_factor: Hyper(128, low=0.0, key="min_dim_size_to_factor",
                                     doc="factor a param only when its second largest axis is at least this long"),
            dr: Hyper(0.8, low=0.0, key="decay_rate", doc="c: β̂_t = 1 − (t − offset)^(−c)"),
            doff: Hyper(0.0, low=0.0, key="decay_offset", doc="step offset of the decay schedule (fine-tuning)"),
            scale: Hyper(True, kind="bool", key="multiply_by_parameter_scale", doc="scale the step by max(RMS(θ), 1e-3)"),
            clip: Hyper(1.0, low=0.0, low_open=True, kind="optional", key="clipping_threshold",
                        doc="d, update RMS clipping threshold (None: no clipping)"),
            mom: Hyper(NONE_VALUE, low=0.0, high=1.0, kind="optional", key="momentum",
                       doc="μ, decay of the moving average of the update (None: no momentum, no ema state)"),
            eps1: Hyper(1e-30, low=0.0, key="eps", doc="ε, added to g²"),
            wdr: Hyper(NONE_VALUE, low=0.0, kind="optional", key="weight_decay_rate",
                       doc="λ, θ ← θ − λθ (not scaled by α; None: no decay)"),
        },
        updates=[
            (R, R + (1 - beta) * (RowMean(g2) - R)),
            (C, C + (1 - beta) * (ColMean(g2) - C)),
            (V, V + (1 - beta) * (g2 - V)),
            (U, u),
            (U, clipped),
            *step,
        ],
    )


ADAFACTOR_OPTAX_DOC = """Adafactor as optax.adafactor (factored=True; Optax 0.2.8).

    β̂_t = 1 − (t − offset)^(−c)
    factored:  R ← β̂ R + (1 − β̂) mean_j(g² + ε);  C ← β̂ C + (1 − β̂) mean_i(g² + ε)
               U = g (R / mean_i R)^(−1/2) C^(−1/2)
    else:      V ← β̂ V + (1 − β̂)(g² + ε);  U = g / √V
    U ← U / max(1, RMS(U)/d);   u = α max(RMS(θ), 1e-3) U
    momentum:  m ← μ m + (1 − μ) u;  u = m
    θ ← θ − u − λθ

A param is factored when it is at least 2-D and the second largest of its axes has at least
min_dim_size_to_factor entries; as Optax's _factored_dims, its rows lie along that axis and its
columns along the largest (j runs over the largest axis, i over the second largest; the other
axes are batch axes), wherever they are in the param.
lr 1e-2 (Optax: learning_rate=None, no scaling), min_dim_size_to_factor 128, decay_rate 0.8,
decay_offset 0, multiply_by_parameter_scale True, clipping_threshold 1.0 (None: no clipping),
momentum None (no ema state; the state ema is kept in the param's dtype, Optax's dtype_momentum
float32), eps 1e-30, weight_decay_rate None.  weight_decay_mask is not a keyword: give the params
to leave undecayed a param group of their own with weight_decay_rate None.  Optax computes β̂_t
in float32; symopt in the param's dtype."""


def families() -> list[Family]:
    rule = adafactor()
    out = [Family(rule.name, [(sp.true, rule)], doc=rule.doc, source=rule.source, references=rule.references,
                  group="matrix")]
    plain, with_momentum = adafactor_optax(), adafactor_optax(momentum=True)
    out.append(Family(plain.name, [(sp.Lt(mom, 0), plain), (sp.true, with_momentum)], doc=plain.doc,
                      source=plain.source, references=plain.references, group="matrix", refused={
                          "weight_decay_mask": "give the params that are not decayed a param group of their own with "
                                               "weight_decay_rate None (in JAX: optax.partition two symopt.jax."
                                               "transform('adafactor_optax', ...), one with weight_decay_rate None)",
                          "dtype_momentum": "the ema state is kept in the params' dtype (Optax's default float32 for "
                                            "float32 params)"}))
    return out
