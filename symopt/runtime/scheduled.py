"""Scheduled hyperparameters at run time (no SymPy here).

A hyperparameter value may be a :class:`symopt.schedule.Schedule` (any object whose type
has ``__symopt_schedule__ = True`` and is callable with the 1-based step ``t``).  The
optimizer then

* validates it at ``t = 1`` when the value is set, and uses that first value for variant
  selection, constraints and state initial values;
* evaluates every scheduled argument at the step being taken through :func:`wrap`
  (``ScheduledScalars.arguments``), checks it against the hyperparameter's range (a
  ``ValueError`` naming the step, before anything is modified), and passes the float64
  value on: to the kernel in the group's row of hyperparameters, or to the rule's per-step
  scalar function (``ScheduledScalars`` called).  Nothing is generated or compiled; a
  resumed optimizer (restored step counts) evaluates the same values.
"""

from __future__ import annotations

import math


def is_schedule(x) -> bool:
    return getattr(type(x), "__symopt_schedule__", False) is True


def any_schedule(values: dict) -> bool:
    return any(is_schedule(v) for v in values.values())


def first_step(values: dict) -> dict:
    """``values`` with every schedule replaced by its value at t = 1 (the same dict if none)."""
    if not any_schedule(values):
        return values
    return {k: (float(v(1)) if is_schedule(v) else v) for k, v in values.items()}


def check_value(x, h: dict, what: str) -> float:
    """A scheduled value, checked like a plain one: finite and inside the hyperparameter's range."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{what} is not a real number: {x!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{what} must be finite, got {x!r}")
    lo, hi = h["low"], h["high"]
    if lo is not None and (x < lo or (h["low_open"] and x == lo)):
        raise ValueError(f"{what} = {x!r}: must be {'>' if h['low_open'] else '>='} {lo}")
    if hi is not None and (x > hi or (h["high_open"] and x == hi)):
        raise ValueError(f"{what} = {x!r}: must be {'<' if h['high_open'] else '<='} {hi}")
    return x


def validated(schedule, h: dict, what: str):
    """Check a schedule where a value is set (its value at t = 1); returns the schedule itself."""
    if h["kind"] != "float":
        raise TypeError(f"{what}: a schedule can only set a float hyperparameter")
    check_value(schedule(1), h, f"{what} (schedule at t=1)")
    return schedule


class ScheduledScalars:
    """The per-step scalar function with scheduled arguments evaluated at ``t``."""

    def __init__(self, fn, specs: list):
        self.fn = fn
        self.specs = specs           # the Hyper dict of each argument after t, in order

    def arguments(self, t, *args) -> list:
        """``args`` with every schedule evaluated at ``t`` and checked (a ``ValueError`` naming the step)."""
        return [check_value(a(t), h, f"{h['key']} (schedule at step t={t})") if is_schedule(a) else a
                for a, h in zip(args, self.specs)]

    def __call__(self, t, *args):
        return self.fn(t, *self.arguments(t, *args))


def wrap(fn, spec, names):
    """``fn`` wrapped to evaluate schedules (idempotent)."""
    if isinstance(fn, ScheduledScalars):
        return fn
    by_name = {h["name"]: h for h in spec.hyper}
    return ScheduledScalars(fn, [by_name[n] for n in names])
