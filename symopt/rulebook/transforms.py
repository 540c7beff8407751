"""Transforms that compose with any rule into ONE rule (and one kernel).

``symopt.compose(base, *transforms)`` (see :mod:`.compose`) substitutes each
transform into the base rule's SymPy updates.  A transform acts at one of three
places, in the order given:

* on the **gradient**, before the base rule (``g ← f(g)``): coupled weight decay,
  clipping by value, clipping by global norm, sign;
* on the **update**, after it (Δ = θ_new − θ_{t−1}): cautious masking, sign of the
  update, decoupled weight decay, Lookahead, an EMA of the params;
* on the **base rule itself**: Nesterov-style look-ahead of a moment.

=======================  ==========  ================================================  ======================
transform                acts on     formula                                            keyword (default)
=======================  ==========  ================================================  ======================
coupled_weight_decay     gradient    g ← g + λ θ_{t−1}                                  weight_decay (1e-2)
clip_by_value            gradient    g ← min(max(g, −c), c)                             clip_value (1.0)
clip_global_norm         gradient    g ← g · min(1, c / (‖g‖_all + ε))                  max_norm (1.0),
                                     (‖g‖_all: 2-norm over every tensor; torch's         clip_eps (1e-6)
                                     clip_grad_norm_ with its ε = 1e-6; ε = 0 gives
                                     Optax's clip_by_global_norm)
sign(on="grad")          gradient    g ← sign(g)                                        --
sign(on="update")        update      Δ ← α · sign(Δ)       (α: the base's ``lr``)       --
cautious                 update      Δ ← Δ · φ · n / (Σφ + 1),  φ = [Δ · g < 0]         --
                                     (n: the tensor's element count; the update
                                     only where it agrees with −g, rescaled --
                                     Liang et al. 2024, as pytorch-optimizer)
decoupled_weight_decay   update      Δ ← Δ − α λ θ_{t−1}  (``scale_by_lr=False``:       weight_decay (1e-2)
                                     Δ − λ θ_{t−1})
lookahead                update      every k-th step (t mod k = 0):                     lookahead_k (5),
                                     φ ← φ + a (θ_{t−1} + Δ − φ),  θ_t ← φ;              lookahead_alpha (0.5)
                                     otherwise θ_t = θ_{t−1} + Δ.  φ: slow weights,
                                     state ``slow_param`` starting as a copy of θ
                                     (Zhang et al. 2019)
ema                      update      e ← β e + (1 − β) θ_t; state ``ema`` starting as   ema_decay (0.999)
                                     a copy of θ; the params themselves unchanged
nesterov                 the rule    the moment m's own update F(m, g) is applied once   --
                                     more in the param update: m_t is replaced by
                                     F(m_t, g_t) (β m_t + (1 − β) g_t for an EMA, μ m_t
                                     + g_t for torch's SGD buffer); state updates
                                     still read m_t; bias corrections unchanged
=======================  ==========  ================================================  ======================

Each transform's hyperparameters become keyword arguments of the composed rule;
``key=`` renames the main one when the base already uses that keyword.  Values
passed to a transform are the defaults of the composed rule (the runtime may
change them per param group like any hyperparameter: no recompilation).
"""

from __future__ import annotations

import sympy as sp

from .reduction import TensorSum, global_norm
from .metadata import Hyper, RuleError, State, t

__all__ = ["Transform", "coupled_weight_decay", "decoupled_weight_decay", "clip_by_value", "clip_global_norm",
           "cautious", "sign", "nesterov", "lookahead", "ema"]


class Transform:
    """A piece that :func:`symopt.compose` substitutes into a rule.

    ``kind`` is ``"grad"`` (rebinds the gradient before the base rule), ``"update"``
    (rewrites the new param after it) or ``"rule"`` (rewrites the base's updates).
    Subclasses implement :meth:`apply`.
    """

    kind = "grad"
    name = "transform"

    def __init__(self, **hyper):
        self._hyper = hyper     # role -> (default, Hyper kwargs, key, symbol name, latex)

    def hypers(self, ctx) -> dict:
        """{symbol: Hyper} of this transform, symbols made fresh in ``ctx``."""
        out = {}
        self.syms = {}
        for role, (default, spec, key, sym_name, latex) in self._hyper.items():
            sym = ctx.fresh(sym_name, latex)
            self.syms[role] = sym
            out[sym] = Hyper(default, key=key, **spec)
        return out

    def apply(self, ctx):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        vals = ", ".join(f"{k}={v[0]!r}" for k, v in self._hyper.items())
        return f"symopt.transforms.{self.name}({vals})"


def _nonneg(default, key, doc, sym_name, latex, **extra):
    return (float(default), {"low": 0.0, "doc": doc, **extra}, key, sym_name, latex)


class _GradTransform(Transform):
    kind = "grad"

    def __init__(self, name, fn, **hyper):
        super().__init__(**hyper)
        self.name = name
        self._fn = fn

    def apply(self, ctx):
        ctx.updates.append((ctx.grad, self._fn(ctx, self.syms)))


def coupled_weight_decay(weight_decay: float = 1e-2, *, key: str = "weight_decay") -> Transform:
    """L2 penalty in the gradient: g ← g + λ θ_{t−1} (torch's ``weight_decay`` in Adam/SGD)."""
    return _GradTransform("coupled_weight_decay", lambda c, s: c.grad + s["wd"] * c.param,
                          wd=_nonneg(weight_decay, key, "λ, coupled weight decay: g ← g + λ θ", "lambda_c",
                                     r"\lambda_{c}"))


def clip_by_value(clip_value: float = 1.0, *, key: str = "clip_value") -> Transform:
    """g ← min(max(g, −c), c) (torch's clip_grad_value_, Optax's clip)."""
    return _GradTransform("clip_by_value", lambda c, s: sp.Min(sp.Max(c.grad, -s["c"]), s["c"]),
                          c=_nonneg(clip_value, key, "c, gradients are clipped to [−c, c]", "c_clip",
                                    r"c_{\mathrm{clip}}"))


def clip_global_norm(max_norm: float = 1.0, eps: float = 1e-6, *, key: str = "max_norm",
                     eps_key: str = "clip_eps") -> Transform:
    """g ← g · min(1, c / (‖g‖ + ε)), ‖g‖ the 2-norm over every tensor of the step.

    torch.nn.utils.clip_grad_norm_ (ε = 1e-6); ε = 0 gives Optax's clip_by_global_norm.
    A reduction: one read-only pass over the gradients precedes the elementwise pass.
    """
    return _GradTransform(
        "clip_global_norm",
        lambda c, s: c.grad * sp.Min(1, s["c"] / (global_norm(c.grad) + s["eps"])),
        c=_nonneg(max_norm, key, "c, largest global 2-norm of the gradients", "c_norm", r"c_{\mathrm{norm}}",
                  low_open=True),
        eps=_nonneg(eps, eps_key, "ε added to the global norm (torch: 1e-6)", "epsilon_clip",
                    r"\epsilon_{\mathrm{clip}}"))


class _Sign(Transform):
    name = "sign"

    def __init__(self, on):
        super().__init__()
        if on not in ("grad", "update"):
            raise RuleError(f"sign(on=...) must be 'grad' or 'update', got {on!r}")
        self.on = on
        self.kind = on

    def apply(self, ctx):
        if self.on == "grad":
            ctx.updates.append((ctx.grad, sp.sign(ctx.grad)))
        else:
            ctx.set_new_param(ctx.param + ctx.lr("sign(on='update')") * sp.sign(ctx.delta()))

    def __repr__(self):
        return f"symopt.transforms.sign(on={self.on!r})"


def sign(on: str = "grad") -> Transform:
    """``on="grad"``: g ← sign(g) (signSGD; with momentum after it: sign before momentum).
    ``on="update"``: Δ ← α sign(Δ) (signum: the sign of the base's update, step α = lr)."""
    return _Sign(on)


class _Cautious(Transform):
    kind = "update"
    name = "cautious"

    def apply(self, ctx):
        d = ctx.assign("delta_c", ctx.delta(), r"\Delta")
        # [Δ·g < 0] as Heaviside(−Δ g, 0): a Piecewise of a relation would be folded by SymPy into
        # one branch per Piecewise inside Δ (the base's options), each evaluated per element.
        phi = ctx.assign("phi_c", sp.Heaviside(-d * ctx.grad, 0), r"\phi")
        ctx.set_new_param(ctx.param + d * phi * TensorSum(1) / (TensorSum(phi) + 1))


def cautious() -> Transform:
    """Keep the update only where it agrees with the descent direction −g, rescaled by
    n/(Σφ + 1) over the tensor (Cautious Optimizers, Liang et al. 2024; pytorch-optimizer's
    apply_cautious).  A per-tensor reduction."""
    return _Cautious()


class _DecoupledDecay(Transform):
    kind = "update"
    name = "decoupled_weight_decay"

    def __init__(self, weight_decay, scale_by_lr, key):
        super().__init__(wd=_nonneg(weight_decay, key, "λ, decoupled weight decay: Δ ← Δ − α λ θ" if scale_by_lr
                                    else "λ, decoupled weight decay: Δ ← Δ − λ θ", "lambda_d", r"\lambda"))
        self.scale_by_lr = scale_by_lr

    def apply(self, ctx):
        rate = self.syms["wd"] * (ctx.lr("decoupled_weight_decay") if self.scale_by_lr else 1)
        ctx.set_new_param(ctx.new_param - rate * ctx.param)


def decoupled_weight_decay(weight_decay: float = 1e-2, *, scale_by_lr: bool = True,
                           key: str = "weight_decay") -> Transform:
    """θ_t = θ_{t−1} + Δ − α λ θ_{t−1} (AdamW: torch multiplies θ by 1 − α λ before the update).
    ``scale_by_lr=False``: − λ θ_{t−1} (Loshchilov & Hutter's fully decoupled form)."""
    return _DecoupledDecay(weight_decay, scale_by_lr, key)


class _Lookahead(Transform):
    kind = "update"
    name = "lookahead"

    def apply(self, ctx):
        k, a = self.syms["k"], self.syms["alpha"]
        sync = sp.Eq(sp.Mod(t, k), 0)
        phi = ctx.fresh_state("phi_la", r"\phi", State(ctx.param, key="slow_param",
                                                       doc="Lookahead's slow weights (copy of the param at start)"))
        fast = ctx.assign("theta_fast", ctx.new_param, r"\tilde{\theta}")
        ctx.updates.append((phi, sp.Piecewise((phi + a * (fast - phi), sync), (phi, True))))
        ctx.set_new_param(sp.Piecewise((phi, sync), (fast, True)))


def lookahead(k: int = 5, alpha: float = 0.5) -> Transform:
    """Lookahead (Zhang et al. 2019): every k steps the slow weights φ move a fraction α
    toward the fast ones and the params are reset to them; otherwise the base steps."""
    la = _Lookahead(k=(float(k), {"low": 1.0, "doc": "k, synchronise every k steps (t mod k = 0)"},
                       "lookahead_k", "k_la", "k"),
                    alpha=(float(alpha), {"low": 0.0, "high": 1.0, "doc": "α, slow-weights step size"},
                           "lookahead_alpha", "alpha_la", r"\alpha_{\mathrm{la}}"))
    return la


class _Ema(Transform):
    kind = "update"
    name = "ema"

    def apply(self, ctx):
        b = self.syms["beta"]
        e = ctx.fresh_state("e_ema", r"e", State(ctx.param, key="ema", doc="EMA of the params"))
        ctx.updates.append((e, b * e + (1 - b) * ctx.new_param))


def ema(decay: float = 0.999, *, key: str = "ema_decay") -> Transform:
    """An exponential moving average of the params, e ← β e + (1 − β) θ_t, kept as state ``ema``
    (read it from ``opt.state[i]["ema"]``); the update itself is unchanged."""
    return _Ema(beta=(float(decay), {"low": 0.0, "high": 1.0, "doc": "β, decay of the params' EMA"},
                      key, "beta_ema", r"\beta_{\mathrm{ema}}"))


class _Nesterov(Transform):
    kind = "rule"
    name = "nesterov"

    def __init__(self, state_key):
        super().__init__()
        self.state_key = state_key

    def rewrite(self, rule, updates, ctx):
        """Insert m̃ = F(m_t, g_t) after m's update; later temporaries and param updates read m̃."""
        cands = [s for s in rule.state if (self.state_key is None or rule.state_key(s) == self.state_key)]
        target = None
        for s in cands:
            for lhs, rhs in updates:
                if lhs == s and s in rhs.free_symbols and rule.grad in rhs.free_symbols:
                    target = (s, rhs)
                    break
            if target:
                break
        if target is None:
            raise RuleError(f"nesterov(): no state {'' if self.state_key is None else repr(self.state_key) + ' '}"
                            f"of {rule.name!r} is updated from itself and the gradient")
        m, rhs_m = target
        look = ctx.fresh("m_nesterov", r"\tilde{m}")
        out, seen = [], False
        for lhs, rhs in updates:
            if seen and lhs not in rule.state and m in rhs.free_symbols:
                rhs = rhs.xreplace({m: look})
            out.append((lhs, rhs))
            if lhs == m and rhs is rhs_m and not seen:
                out.append((look, rhs_m))
                seen = True
        return out

    def __repr__(self):
        return f"symopt.transforms.nesterov(state={self.state_key!r})"


def nesterov(state: str | None = None) -> Transform:
    """Nesterov-style look-ahead of a moment (``state``: its state_dict key; default: the
    first state updated from itself and the gradient)."""
    return _Nesterov(state)
