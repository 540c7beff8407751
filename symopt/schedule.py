"""Schedules: a hyperparameter as a SymPy expression of the step ``t``.

``symopt.optimizer("adam", params, lr=symopt.schedule.cosine(1e-3, total_steps=1000,
warmup_steps=100))`` passes a :class:`Schedule` where a number would go.  The runtime
evaluates it once per step, in float64, as one more argument of the rule's per-step
scalar function: no code generation, no recompilation, and a resumed run (same step
counts) sees exactly the same values.  Any float hyperparameter may be scheduled
(``weight_decay``, a β...); every value is checked against the hyperparameter's range.

Steps.  ``t`` is symopt's 1-based step; ``k = t − 1`` is the number of steps already
taken.  The value used by step ``t`` equals

* ``torch.optim.lr_scheduler``'s learning rate after ``k`` calls of ``scheduler.step()``
  (the usual loop: ``opt.step(); scheduler.step()``);
* Optax's ``schedule(count)`` with ``count = k`` (Optax counts updates from 0).

=====================  ===========================================  =====================================
schedule               value at step t (k = t − 1)                  equal to
=====================  ===========================================  =====================================
constant(v)            v                                            torch ConstantLR(factor=1), optax
                                                                    constant_schedule
linear(a, b, n)        a + (b − a) min(k, n)/n                      torch LinearLR, optax linear_schedule
linear_warmup(p, n)    linear(init, p, n)                           the same, from ``init`` (0)
step(v, n, γ)          v γ^⌊k/n⌋                                    torch StepLR, optax exponential_decay
                                                                    (staircase=True)
exponential(v, γ)      v γ^k                                        torch ExponentialLR, optax
                                                                    exponential_decay(transition_steps=1)
cosine(p, T, W, f)     k < W: linear from init to p over W steps;   torch CosineAnnealingLR (W = 0),
                       then f + (p − f)(1 + cos(π min(k−W, D)/D))/2  optax warmup_cosine_decay_schedule
                       with D = T − W                               (decay_steps = T)
one_cycle(p, T, ...)   torch's two phases: cosine from p/div up to  torch OneCycleLR (anneal 'cos',
                       p over ⌊pct·T⌋−1 steps, then down to         three_phase False)
                       p/(div·final_div) at step T−1
inverse_sqrt(p, W)     p min(t/W, √(W/t))  (Vaswani et al. 2017)    torch LambdaLR of the same formula
warmup_stable_decay    linear warm-up from 0, constant, then a      pytorch-optimizer get_wsd_schedule
(p, W, S, D, ...)      '1-sqrt' / 'linear' / '1-square' / 'cosine'
                       cooldown (Hu et al. 2024, MiniCPM)
expr(e)                any SymPy expression of symopt.t            --
=====================  ===========================================  =====================================

A :class:`Schedule` has ``.latex()``, ``__call__(t)``, ``.values(steps)`` and
``.plot(path)``; schedules combine with numbers and each other (``2 * s``, ``s1 * s2``,
``s.clip(lo, hi)``).  ``symopt show schedule.cosine peak=1e-3 total_steps=1000
warmup_steps=100 --plot cosine.png`` prints the LaTeX and draws it.
"""

from __future__ import annotations

import math
import textwrap

import sympy as sp

from .rulebook.metadata import t as T_STEP

__all__ = ["Schedule", "constant", "linear", "linear_warmup", "step", "exponential", "cosine", "one_cycle",
           "inverse_sqrt", "warmup_stable_decay", "expr", "KINDS"]

k = T_STEP - 1  # steps already taken


#: Steps at which a schedule without a horizon is checked to be defined when it is built.
CHECKED_STEPS = 10_000
MAX_CHECKED_STEPS = 100_000


def _printable(text) -> str:
    """``text`` with every non-printable character (terminal escape sequences...) written as an escape."""
    text = str(text)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _num(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
        raise ValueError(f"schedule: {name} must be a finite number, got {x!r}")
    return float(x)


def _steps(x, name: str, minimum: int = 1) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or float(x) != int(x) or int(x) < minimum:
        raise ValueError(f"schedule: {name} must be an integer >= {minimum}, got {x!r}")
    return int(x)


class Schedule:
    """A value as a function of the 1-based step ``t``, written as a SymPy expression.

    Calling it (``s(t)``) evaluates a compiled float64 Python function of ``t`` (no SymPy
    at run time).  The runtime recognises it by ``__symopt_schedule__``.
    """

    __symopt_schedule__ = True

    def __init__(self, expression, *, name: str = "schedule", params: dict | None = None, horizon: int | None = None):
        if isinstance(expression, sp.Basic):
            e = expression
        elif isinstance(expression, str):  # restricted parser: sympify would eval the text
            from .rulebook.parse import parse_expression

            e = parse_expression(expression)
        elif isinstance(expression, (int, float)) and not isinstance(expression, bool):
            e = sp.Integer(expression) if isinstance(expression, int) else sp.Float(float(expression))
        else:
            raise TypeError(f"schedule: expected a SymPy expression, formula text or a number, "
                            f"got {type(expression).__name__}")
        free = e.free_symbols
        if free - {T_STEP}:
            names = {s.name for s in free}
            if names == {"t"}:   # a user's own Symbol("t"): read it as symopt.t
                e = e.xreplace({s: T_STEP for s in free})
            else:
                raise ValueError(f"schedule: the expression may only use symopt.t, it uses {sorted(names)}")
        from .rulebook.validate import check_expression

        check_expression(e, f"schedule {name}")
        if not isinstance(name, str):
            raise TypeError(f"schedule: name must be a str, got {type(name).__name__}")
        if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
            raise ValueError(f"schedule: horizon must be an integer >= 1, got {horizon!r}")
        self.expr = e
        self.name = name
        self.params = dict(params or {})
        self.horizon = horizon
        self._fn = None
        self._check_defined()

    def _check_defined(self) -> None:
        """Refuse a schedule that is undefined or not finite at some step ``t = 1..n`` (``n``: the
        horizon, else :data:`CHECKED_STEPS`; at most :data:`MAX_CHECKED_STEPS`), naming the first such step."""
        n = min(self.horizon or CHECKED_STEPS, MAX_CHECKED_STEPS)
        if not self.expr.has(T_STEP):
            n = 1
        for t in range(1, n + 1):
            self(t)

    # -- evaluation --------------------------------------------------------------
    def _compile(self):
        from .codegen.printers import scalar_function

        self._fn = scalar_function(self.expr, [T_STEP], "<symopt schedule>")
        return self._fn

    def jax_function(self):
        """The schedule as a ``jax.numpy`` function of the 1-based step ``t`` (a traced array): what
        :func:`symopt.jax.transform` evaluates inside ``jax.jit``."""
        if getattr(self, "_jax_fn", None) is None:
            from .codegen.printers import jax_function

            self._jax_fn = jax_function(self.expr, [T_STEP], "<symopt schedule, jax>")
        return self._jax_fn

    def __call__(self, t) -> float:
        """The value at the 1-based step ``t`` (float64); ``ValueError`` naming the step where the
        expression is undefined (a division by zero, the log of a negative number) or not finite."""
        fn = self._fn or self._compile()
        try:
            value = float(fn(int(t)))
        except (ArithmeticError, ValueError) as exc:
            raise ValueError(f"schedule {self!r} is undefined at step t={t} ({type(exc).__name__}: {exc})") from None
        if not math.isfinite(value):
            raise ValueError(f"schedule {self!r} is not finite at step t={t} ({value!r})")
        return value

    def values(self, steps) -> list:
        """Values at ``t = 1..steps`` (or at the given iterable of steps)."""
        ts = range(1, int(steps) + 1) if isinstance(steps, int) else steps
        return [self(t) for t in ts]

    # -- display -----------------------------------------------------------------
    def latex(self) -> str:
        r"""``\eta_{t} = ...`` with ``t`` the 1-based step."""
        return r"\eta_{t} = " + sp.latex(self.expr)

    def _repr_latex_(self) -> str:
        return "$" + self.latex() + "$"

    def plot(self, path, steps: int | None = None, *, title: str | None = None) -> None:
        """Draw the schedule over ``t = 1..steps`` into an image file (matplotlib)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = int(steps or self.horizon or 1000)
        ts = list(range(1, n + 1))
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
        ax.plot(ts, self.values(ts), lw=1.6)
        ax.set_xlabel("step t")
        ax.set_ylabel("value")
        ax.set_title("\n".join(textwrap.wrap(title or repr(self), 80)), fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)

    def __repr__(self) -> str:
        args = ", ".join(f"{_printable(k)}={_printable(repr(v))}" for k, v in self.params.items())
        return f"symopt.schedule.{_printable(self.name)}({args})"

    # -- algebra -----------------------------------------------------------------
    def _wrap(self, e, label):
        return Schedule(e, name="expr", params={"of": label}, horizon=self.horizon)

    def _other(self, o):
        if isinstance(o, Schedule):
            return o.expr
        return sp.Float(_num(o, "operand"))

    def __mul__(self, o):
        return self._wrap(self.expr * self._other(o), f"{self!r} * {o!r}")

    __rmul__ = __mul__

    def __add__(self, o):
        return self._wrap(self.expr + self._other(o), f"{self!r} + {o!r}")

    __radd__ = __add__

    def clip(self, low=None, high=None) -> Schedule:
        e = self.expr
        if low is not None:
            e = sp.Max(e, sp.Float(_num(low, "low")))
        if high is not None:
            e = sp.Min(e, sp.Float(_num(high, "high")))
        return self._wrap(e, f"{self!r}.clip({low!r}, {high!r})")

    # -- pickling (state dicts keep the schedule object; SymPy expressions pickle) ---
    def __reduce__(self):
        return (_rebuild, (self.expr, self.name, self.params, self.horizon))


def _rebuild(expression, name, params, horizon):
    return Schedule(expression, name=name, params=params, horizon=horizon)


# -- checkpoints (symopt.runtime.checkpoint stores schedules as plain JSON data) ------------------
def schedule_to_data(schedule) -> dict | None:
    """``{"expr", "name", "params", "horizon"}`` of a :class:`Schedule` (the expression exactly,
    :func:`symopt.rulebook.parse.expr_to_data`); None for any other schedule type."""
    if not isinstance(schedule, Schedule):
        return None
    from .rulebook.parse import expr_to_data

    return {"expr": expr_to_data(schedule.expr), "name": schedule.name, "params": schedule.params,
            "horizon": schedule.horizon}


def schedule_from_data(data: dict) -> Schedule:
    """The :class:`Schedule` of :func:`schedule_to_data`'s output (``RuleError``/``TypeError``/
    ``ValueError`` for malformed data)."""
    from .rulebook.parse import expr_from_data

    return Schedule(expr_from_data(data.get("expr")), name=data["name"], params=dict(data.get("params") or {}),
                    horizon=data.get("horizon"))


# -- the built-in schedules -------------------------------------------------------------------
def constant(value: float) -> Schedule:
    """η_t = value."""
    v = _num(value, "value")
    return Schedule(sp.Float(v), name="constant", params={"value": v})


def linear(init: float, end: float, steps: int) -> Schedule:
    """η_t = init + (end − init) min(t − 1, steps)/steps (torch LinearLR, optax linear_schedule)."""
    a, b, n = _num(init, "init"), _num(end, "end"), _steps(steps, "steps")
    e = sp.Float(a) + sp.Float(b - a) * sp.Min(k, n) / n
    return Schedule(e, name="linear", params={"init": a, "end": b, "steps": n}, horizon=2 * n)


def linear_warmup(peak: float, warmup_steps: int, init: float = 0.0) -> Schedule:
    """Linear from ``init`` to ``peak`` over ``warmup_steps`` steps, then ``peak``."""
    s = linear(init, peak, warmup_steps)
    s.name, s.params = "linear_warmup", {"peak": float(peak), "warmup_steps": int(warmup_steps), "init": float(init)}
    return s


def step(value: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """η_t = value γ^⌊(t−1)/step_size⌋ (torch StepLR)."""
    v, n, g = _num(value, "value"), _steps(step_size, "step_size"), _num(gamma, "gamma")
    # ⌊k/n⌋ = ⌊(k + ½)/n⌋ for integer k, and (k + ½)/n stays ≥ 1/(2n) away from an integer, so the
    # float64 quotient cannot round across one (⌊k/n⌋ itself could land just below an integer).
    return Schedule(sp.Float(v) * sp.Float(g) ** sp.floor((k + sp.Rational(1, 2)) / n), name="step",
                    params={"value": v, "step_size": n, "gamma": g}, horizon=4 * n)


def exponential(value: float, gamma: float) -> Schedule:
    """η_t = value γ^(t−1) (torch ExponentialLR)."""
    v, g = _num(value, "value"), _num(gamma, "gamma")
    return Schedule(sp.Float(v) * sp.Float(g) ** k, name="exponential", params={"value": v, "gamma": g})


def cosine(peak: float, total_steps: int, warmup_steps: int = 0, floor: float = 0.0, init: float = 0.0) -> Schedule:
    """Linear warm-up from ``init`` to ``peak`` over ``warmup_steps``, then a half cosine from
    ``peak`` down to ``floor`` at ``total_steps`` (and ``floor`` after it)."""
    p, T, W = _num(peak, "peak"), _steps(total_steps, "total_steps"), _steps(warmup_steps, "warmup_steps", 0)
    f, i = _num(floor, "floor"), _num(init, "init")
    if W >= T:
        raise ValueError(f"schedule.cosine: warmup_steps ({W}) must be below total_steps ({T})")
    D = T - W
    decay = sp.Float(f) + sp.Float(p - f) * (1 + sp.cos(sp.pi * sp.Min(k - W, D) / D)) / 2
    e = decay if W == 0 else sp.Piecewise((sp.Float(i) + sp.Float(p - i) * k / W, k < W), (decay, True))
    return Schedule(e, name="cosine", params={"peak": p, "total_steps": T, "warmup_steps": W, "floor": f, "init": i},
                    horizon=T)


def one_cycle(max_lr: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
              final_div_factor: float = 1e4) -> Schedule:
    """torch.optim.lr_scheduler.OneCycleLR (anneal_strategy='cos', three_phase=False)."""
    m, T = _num(max_lr, "max_lr"), _steps(total_steps, "total_steps", 2)
    pct, div, fdiv = _num(pct_start, "pct_start"), _num(div_factor, "div_factor"), _num(final_div_factor,
                                                                                       "final_div_factor")
    lo = m / div
    fin = lo / fdiv
    e1 = float(pct * T) - 1          # torch: end of phase 1 (a float step index)
    e2 = T - 1

    def cos_anneal(start, end, frac):
        return sp.Float(end) + sp.Float(start - end) / 2 * (sp.cos(sp.pi * frac) + 1)

    e = sp.Piecewise((cos_anneal(lo, m, k / sp.Float(e1)), k <= e1),
                     (cos_anneal(m, fin, (k - sp.Float(e1)) / sp.Float(e2 - e1)), True))
    return Schedule(e, name="one_cycle", params={"max_lr": m, "total_steps": T, "pct_start": pct,
                                                 "div_factor": div, "final_div_factor": fdiv}, horizon=T)


def inverse_sqrt(peak: float, warmup_steps: int) -> Schedule:
    """η_t = peak · min(t/W, √(W/t)): linear warm-up to ``peak`` at t = W, then ∝ 1/√t
    (Vaswani et al. 2017: d^−½ min(t^−½, t W^−3/2) with peak = (d W)^−½)."""
    p, W = _num(peak, "peak"), _steps(warmup_steps, "warmup_steps")
    e = sp.Float(p) * sp.Min(T_STEP / sp.Integer(W), sp.sqrt(sp.Integer(W) / T_STEP))
    return Schedule(e, name="inverse_sqrt", params={"peak": p, "warmup_steps": W}, horizon=20 * W)


def warmup_stable_decay(peak: float, warmup_steps: int, stable_steps: int, decay_steps: int,
                        min_lr_ratio: float = 0.0, cooldown: str = "1-sqrt", num_cycles: float = 0.5) -> Schedule:
    """Warm-up, stable, decay (Hu et al. 2024), as pytorch-optimizer's get_wsd_schedule:
    k/W during warm-up, 1 while stable, then the cooldown ('1-sqrt', 'linear', '1-square' to 0,
    'cosine' to min_lr_ratio), and min_lr_ratio after; times ``peak``."""
    p = _num(peak, "peak")
    W, S, D = (_steps(warmup_steps, "warmup_steps", 0), _steps(stable_steps, "stable_steps", 0),
               _steps(decay_steps, "decay_steps"))
    r, cyc = _num(min_lr_ratio, "min_lr_ratio"), _num(num_cycles, "num_cycles")
    x = (k - W - S) / sp.Integer(D)
    # √(n)/√D, not √(n/D): SymPy distributes n/D into t/D − c/D, whose rounding √ would blow up near n = 0.
    cool = {"1-sqrt": 1 - sp.sqrt(k - W - S) / sp.sqrt(sp.Integer(D)), "linear": 1 - x, "1-square": 1 - x**2,
            "cosine": (1 - sp.Float(r)) * sp.Max(0, (1 + sp.cos(sp.pi * sp.Float(cyc) * 2 * x)) / 2) + sp.Float(r)}
    if cooldown not in cool:
        raise ValueError(f"schedule.warmup_stable_decay: cooldown must be one of {sorted(cool)}, got {cooldown!r}")
    ratio = sp.Piecewise((k / sp.Integer(max(1, W)), k < W), (1, k < W + S), (cool[cooldown], k < W + S + D),
                         (sp.Float(r), True))
    return Schedule(sp.Float(p) * ratio, name="warmup_stable_decay",
                    params={"peak": p, "warmup_steps": W, "stable_steps": S, "decay_steps": D, "min_lr_ratio": r,
                            "cooldown": cooldown, "num_cycles": cyc}, horizon=W + S + D + max(1, D // 4))


def expr(expression, *, horizon: int | None = None) -> Schedule:
    """A schedule from any SymPy expression of ``symopt.t`` (the 1-based step)."""
    return Schedule(expression, name="expr", params={"expression": sp.sstr(expression)}, horizon=horizon)


#: Built-in schedule constructors by name (``symopt show schedule.<name>``).
KINDS = {"constant": constant, "linear": linear, "linear_warmup": linear_warmup, "step": step,
         "exponential": exponential, "cosine": cosine, "one_cycle": one_cycle, "inverse_sqrt": inverse_sqrt,
         "warmup_stable_decay": warmup_stable_decay}


# -- `symopt show schedule.NAME key=value ... [--plot FILE.png]` --------------------------------
def _parse_value(text: str):
    if text in ("True", "False"):
        return text == "True"
    try:
        x = float(text)
    except ValueError:
        return text  # e.g. cooldown=linear
    return int(x) if x.is_integer() and "." not in text and "e" not in text.lower() else x


def show_cli(args) -> int:
    """Print a schedule's LaTeX and a few values; draw it with ``--plot``."""
    kind = args.name.split(".", 1)[1]
    if kind not in KINDS:
        raise ValueError(f"unknown schedule {kind!r}; known: {', '.join(KINDS)}")
    kwargs = {}
    for item in args.params or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"schedule parameters are key=value, got {item!r}")
        kwargs[key] = _parse_value(value)
    try:
        s = KINDS[kind](**kwargs)
    except TypeError as exc:
        import inspect

        raise ValueError(f"{exc}; schedule.{kind}{inspect.signature(KINDS[kind])}") from None
    print(f"{s!r}")
    print(f"  {s.latex()}")
    n = int(args.steps or s.horizon or 1000)
    marks = sorted({1, 2, max(1, n // 10), max(1, n // 4), max(1, n // 2), max(1, 3 * n // 4), n})
    print("  " + "  ".join(f"t={t}: {s(t):.6g}" for t in marks))
    if args.plot:
        s.plot(args.plot, n)
        print(f"  plot: {args.plot}")
    return 0
