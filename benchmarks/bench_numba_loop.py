"""A training loop fused into one ``@numba.njit`` function against the same loop stepping
``symopt.optimizer`` from Python (``examples/numba_loop.py``).

Both candidates run ``--steps`` steps of the example's 2-16-1 MLP (81 float64 weights, full
batch of ``n`` points) from the same start:

* ``fused``: ``train_fused`` -- gradient and Adam's generated ``element`` for every weight, all
  steps in one compiled call (the per-step scalars precomputed by ``k.scalars``);
* ``per step``: ``train_per_step`` -- the compiled gradient, then ``opt.step([g])`` from
  Python, once per step.

The candidates run interleaved, round after round; the figure is the median over rounds of
(per step time / fused time) within a round.  Both end with bit-identical weights (checked).

    .venv/bin/python benchmarks/bench_numba_loop.py [--sizes 16 256] [--steps 200] [--rounds 15]

``symopt bench`` runs it as its phase [9].
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "numba_loop.py"


def load_example():
    spec = importlib.util.spec_from_file_location("symopt_example_numba_loop", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def measure(sizes=(16, 256), steps: int = 200, rounds: int = 15, log=print) -> list:
    """Rows {"n", "steps", "fused", "per_step" (median seconds per step), "ratio"} per problem size."""
    ex = load_example()
    rows = []
    for n in sizes:
        X, y, w0 = ex.make_problem(n)
        S = ex.scalar_table(steps)

        def fused():
            w = w0.copy()
            m, v = ex.ADAM.init_state(w)
            ex.train_fused(w, m, v, X, y, S)
            return w

        def per_step():
            w = w0.copy()
            ex.train_per_step(w, X, y, steps)
            return w

        if not np.array_equal(fused(), per_step()):       # also compiles both
            raise AssertionError(f"n={n}: the fused loop and the optimizer disagree")
        times = {"fused": [], "per_step": []}
        for r in range(rounds):
            order = ("fused", "per_step") if r % 2 == 0 else ("per_step", "fused")
            for name in order:
                fn = fused if name == "fused" else per_step
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) / steps)
        ratio = float(np.median(np.array(times["per_step"]) / np.array(times["fused"])))
        row = {"n": n, "steps": steps, "fused": float(np.median(times["fused"])),
               "per_step": float(np.median(times["per_step"])), "ratio": ratio}
        log(f"  n={n:4d}: fused {row['fused'] * 1e6:7.2f} us/step, per-step optimizer {row['per_step'] * 1e6:7.2f} "
            f"us/step: {ratio:.2f}x (median of {rounds} per-round ratios)")
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 256])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    measure(args.sizes, args.steps, args.rounds)


if __name__ == "__main__":
    main()
