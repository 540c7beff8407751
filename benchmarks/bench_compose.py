"""Fused vs chained: ``compose("adam", cautious(), clip_global_norm(1.0))`` as one rule.

The composed rule runs as one read-only reduction pass (Σg² over every tensor, Σφ per
tensor) and one elementwise pass that reads and writes each array once.  It is timed
against applying the same pieces one after another, each a pass over memory, as a chain
of transforms does (Optax, heavyball):

* ``chained (symopt adam)``: global-norm clipping in NumPy (norm, scaled copy of the
  gradients), then symopt's generated ``adam`` kernel, then cautious masking in NumPy
  (Δ = θ − θ_old, mask, per-tensor count, θ = θ_old + Δ·mask·scale);
* ``chained (NumPy)``: the whole chain in NumPy, in place where NumPy allows.

``adam alone`` (symopt, no transforms) is the floor: what the base rule costs.  Each entry
is the minimum over ``--repeats`` runs of ``--steps`` steps (the first call compiles and is
not timed), the ratio is chained / fused; both paths are checked to agree (float64 run).

    .venv/bin/python benchmarks/bench_compose.py [--sizes 1e5 1e6 1e7] [--dtype float32] [--threads 1]

Timings on a shared machine drift: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np

import symopt
from symopt.rulebook import transforms as T

LR, B1, B2, EPS, C = 1e-3, 0.9, 0.999, 1e-8, 1.0


def _split(n: int) -> list:
    """A transformer-like mix: a few large matrices and small vectors, n elements in all."""
    parts = [0.4, 0.3, 0.2, 0.09, 0.01]
    sizes = [max(1, int(n * f)) for f in parts]
    sizes[0] += n - sum(sizes)
    return sizes


class ChainedSymopt:
    """Clip (NumPy) -> symopt adam kernel -> cautious (NumPy)."""

    def __init__(self, params):
        self.params = params
        self.opt = symopt.optimizer("adam", params, lr=LR, betas=(B1, B2), eps=EPS, on_nonfinite="ignore")
        self.clipped = [np.empty_like(p) for p in params]
        self.old = [np.empty_like(p) for p in params]

    def step(self, grads):
        norm = math.sqrt(sum(float(np.dot(g, g)) for g in grads))
        f = min(1.0, C / (norm + 1e-6))
        for g, c, p, o in zip(grads, self.clipped, self.params, self.old):
            np.multiply(g, f, out=c)
            np.copyto(o, p)
        self.opt.step(self.clipped)
        for p, o, c in zip(self.params, self.old, self.clipped):
            p -= o                                  # Δ
            mask = (p * c) < 0                      # Δ·g < 0  <=>  update·g > 0
            scale = mask.size / (np.count_nonzero(mask) + 1.0)
            p *= mask
            p *= scale
            p += o


class ChainedNumpy:
    """Clip -> Adam -> cautious, all in NumPy."""

    def __init__(self, params):
        self.params = params
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.tmp = [np.empty_like(p) for p in params]
        self.t = 0

    def step(self, grads):
        self.t += 1
        t = self.t
        norm = math.sqrt(sum(float(np.dot(g, g)) for g in grads))
        f = min(1.0, C / (norm + 1e-6))
        bc1, bc2 = 1 - B1**t, math.sqrt(1 - B2**t)
        for p, g, m, v, u in zip(self.params, grads, self.m, self.v, self.tmp):
            gc = g * f
            m += (1 - B1) * (gc - m)
            v *= B2
            v += (1 - B2) * gc * gc
            np.sqrt(v, out=u)
            u /= bc2
            u += EPS
            np.divide(m, u, out=u)
            u /= bc1                                 # Adam's direction
            mask = (u * gc) > 0
            u *= mask
            u *= LR * mask.size / (np.count_nonzero(mask) + 1.0)
            p -= u


def _time(step, grads, steps, repeats) -> float:
    step(grads)  # compile / warm up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step(grads)
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def _agree(n: int) -> float:
    rng = np.random.default_rng(0)
    sizes = _split(n)
    base = [rng.standard_normal(s) for s in sizes]
    fused_p = [b.copy() for b in base]
    chain_p = [b.copy() for b in base]
    fused = symopt.optimizer(symopt.compose("adam", T.cautious(), T.clip_global_norm(C)), fused_p, lr=LR,
                             betas=(B1, B2), eps=EPS)
    chain = ChainedNumpy(chain_p)
    for _ in range(5):
        grads = [rng.standard_normal(s) for s in sizes]
        fused.step(grads)
        chain.step(grads)
    return max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(fused_p, chain_p))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="*", type=float, default=[1e4, 1e5, 1e6, 1e7])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="numba threads (default 1: compares memory passes, not thread scheduling)")
    args = ap.parse_args(argv)
    symopt.set_num_threads(args.threads)
    dt = np.dtype(args.dtype)
    rule = symopt.compose("adam", T.cautious(), T.clip_global_norm(C))
    print(f"# fused vs chained: {rule.name}  ({dt}, {symopt.get_num_threads()} numba threads, "
          f"{platform.processor() or platform.machine()})")
    print(f"# max relative difference fused vs NumPy chain after 5 steps (float64, 1e4 elements): {_agree(10_000):.1e}")
    print()
    print("| elements | fused (µs/step) | adam alone | chained (symopt adam) | chained (NumPy) | "
          "ratio chained/fused (symopt adam) | ratio (NumPy) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(1)
    for n in map(int, args.sizes):
        sizes = _split(n)
        grads = [(rng.standard_normal(s) * 0.1).astype(dt) for s in sizes]
        mk = lambda: [rng.standard_normal(s).astype(dt) for s in sizes]  # noqa: E731
        fused = symopt.optimizer(rule, mk(), lr=LR, betas=(B1, B2), eps=EPS, on_nonfinite="ignore")
        alone = symopt.optimizer("adam", mk(), lr=LR, betas=(B1, B2), eps=EPS, on_nonfinite="ignore")
        cs, cn = ChainedSymopt(mk()), ChainedNumpy(mk())
        tf = _time(fused.step, grads, args.steps, args.repeats)
        ta = _time(alone.step, grads, args.steps, args.repeats)
        tcs = _time(cs.step, grads, args.steps, args.repeats)
        tcn = _time(cn.step, grads, args.steps, args.repeats)
        print(f"| {n:.0e} | {tf * 1e6:.1f} | {ta * 1e6:.1f} | {tcs * 1e6:.1f} | {tcn * 1e6:.1f} | "
              f"{tcs / tf:.2f}x | {tcn / tf:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
