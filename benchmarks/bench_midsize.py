"""Every size at the limit: Adam on mid-size tensors, the fixed cost of ``step()``, thread wake-up, warm start.

    python -m symopt bench --only midsize [--quick]     (or: python benchmarks/bench_midsize.py [--quick])

1. Mid-size tensors -- one tensor of 1e4, 1e5, 1e6 elements, float32 and float64: the unchecked
   (``on_nonfinite="ignore"``) and the checked Adam step against the *best same-traffic kernel* at
   that size: a serial loop and a ``prange`` loop that read and write the very arrays the step does
   (param, grad, the state buffers), whichever is faster in that round.  A cell is the median over
   rounds of (step time / best same-traffic time in the same round).  Targets: unchecked within 1.5x
   (1e4), 1.3x (1e5), 1.15x (1e6); checked at most one extra read of the grad beyond that (a read:
   the faster of a serial and a ``prange`` loop that only reads the grad, same round).  Beside them, to
   say what bounds a cell: the bare compiled kernel call, and Adam written by hand as a numba loop.
2. The fixed cost of ``step()``: 2 tensors, 650 float32 elements, the median over rounds of
   (step time - time of the bare compiled kernel call on the same arrays).  Target <= 2 us.
3. Thread wake-up: a ``prange`` loop over a few elements against the same loop serial (one
   fork/join).  A threaded step is one parallel region, checked or not (the checked one scans the
   grads, meets at a barrier, then updates): the checked threaded step over the unchecked one,
   Adam float32 at n = 262144 (above the thread threshold), as a ratio and in reads of the grad.
4. Warm start: a fresh process with warm caches (numba's, Python's bytecode) imports symopt, builds
   Adam, steps once (median of 9 processes; target <= 0.5 s, no SymPy), each phase's time in the child
   (numpy, numba, symopt imports, build, first step), and the imports that take longest
   (``python -X importtime``).

Every candidate of a comparison runs round-robin in one process (benchmarks/suite.py's ``measure``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time

import numba
import numpy as np

import symopt
from symopt.runtime import layout

SIZES = (10 ** 4, 10 ** 5, 10 ** 6)
TARGET = {10 ** 4: 1.5, 10 ** 5: 1.3, 10 ** 6: 1.15}
FIXED_TARGET_US = 2.0
WARM_TARGET_S = 0.5
#: Size of the checked/unchecked threaded step of target 3: just above the thread threshold (float32).
ONE_REGION_N = 262144


def _serial(fn):
    """The serial twin of a ``prange`` function of suite.py (``prange`` runs as ``range`` without parallel=True)."""
    return numba.njit(error_model="numpy")(fn.py_func)


@numba.njit(parallel=True)
def _fork_join(x):
    """One parallel region doing (almost) nothing: one element per thread."""
    for i in numba.prange(x.shape[0]):
        x[i] += 1.0


@numba.njit(parallel=True, error_model="numpy")
def _same_arithmetic(p, g, m, v, k):
    """Adam's update written by hand: torch.optim.Adam's formula with its default options, the per-step
    constants computed outside (``k``: β1, 1 − β1, β2, 1 − β2, lr / (1 − β1ᵗ), 1 / √(1 − β2ᵗ), ε).

    Adam's traffic *and* its arithmetic (one square root and one divide per element among it): below
    ~1e6 elements the arrays sit in cache and Adam is bound by that arithmetic instead of the traffic.
    """
    b1, c1, b2, c2, step, rbc2, eps = k[0], k[1], k[2], k[3], k[4], k[5], k[6]
    for i in numba.prange(p.shape[0]):
        gi = g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - step * mi / (np.sqrt(vi) * rbc2 + eps)


def _adam_constants(dtype, t: int = 10, lr: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """``_same_arithmetic``'s ``k`` at step ``t``, in ``dtype``."""
    return np.array([b1, 1 - b1, b2, 1 - b2, lr / (1 - b1 ** t), 1 / np.sqrt(1 - b2 ** t), eps], dtype=dtype)


def midsize(suite, rounds: int, log, sizes=SIZES) -> list:
    """Target 1: rows {"dtype", "n", "ignore", "check", "reads", "serial": bool (the step's kernel), "best": "serial"|"prange"}."""
    rng = np.random.default_rng(7)
    rows = []
    read_serial = _serial(suite._read_once)
    for dtype in suite.DTYPES:
        dname = np.dtype(dtype).name
        for n in sizes:
            p0 = (rng.standard_normal(n)).astype(dtype)
            g = (rng.standard_normal(n) * 1e-3).astype(dtype)
            opt = symopt.optimizer("adam", [p0.copy()], on_nonfinite="ignore")
            tp, states = opt.param_groups[0]["params"][0], opt._state
            par = suite._TRAFFIC[len(states)]
            ser = _serial(par)
            arith, arith_ser = _same_arithmetic, _serial(_same_arithmetic)
            c, k = np.dtype(dtype).type(0.5), _adam_constants(dtype)
            opt.step([g])
            # The bare compiled kernel the unchecked step calls, on its own arrays and tables: the step
            # minus the Python around it (a miss of the kernel itself is arithmetic, not fixed cost).
            threaded = n >= opt.parallel_threshold and symopt.get_num_threads() > 1
            chunks, work = (opt._tables[(symopt.get_num_threads(), False, None)] if threaded
                            else (opt._chunks, opt._work))
            kern = opt._kernel_parallel if threaded else opt._kernel_serial
            kframe = layout.kernel_frame(dtype, (opt._pptr, opt._gptr, *states, opt._offs, chunks, work,
                                                 opt._scal, opt._hyp, opt._no_words, opt._no_steps, False))
            res = suite.measure({"prange": lambda: par(tp, g, *states, c), "serial": lambda: ser(tp, g, *states, c),
                                 "ignore": lambda: opt.step([g]), "check": lambda: opt.step([g]),
                                 "kernel": lambda: kern(kframe),
                                 "arith prange": lambda: arith(tp, g, *states, k),
                                 "arith serial": lambda: arith_ser(tp, g, *states, k),
                                 "read prange": lambda: suite._read_once(g), "read serial": lambda: read_serial(g)},
                                rounds=rounds, budget=8.0, before=suite.check_modes(opt))
            if not suite.all_finite(tp, *states):
                raise RuntimeError(f"adam {dname} n={n}: a param or state went NaN/inf during the rounds; "
                                   f"the figures would time arithmetic on invalid values")
            s = {k: np.array(v["samples"]) for k, v in res.items()}
            best = np.minimum(s["prange"], s["serial"])
            read = np.minimum(s["read prange"], s["read serial"])
            arith_best = np.minimum(s["arith prange"], s["arith serial"])
            row = {"dtype": dname, "n": n, "ignore": float(np.median(s["ignore"] / best)),
                   "check": float(np.median(s["check"] / best)),
                   "reads": float(np.median((s["check"] - s["ignore"]) / read)),
                   "read": float(np.median(read / best)),
                   "kernel": float(np.median(s["kernel"] / best)),
                   "beyond": float(np.median((s["ignore"] - s["kernel"]) / best)),  # the step beyond its kernel call
                   "arith": float(np.median(arith_best / best)),
                   "best": "prange" if np.median(s["prange"] / s["serial"]) < 1 else "serial",
                   "threaded": threaded,
                   "best_us": float(np.median(best)) * 1e6}
            rows.append(row)
            log(f"  adam {dname} n={n:>8}: unchecked {row['ignore']:.2f}x  checked {row['check']:.2f}x of the best "
                f"same-traffic kernel ({row['best']}, {row['best_us']:.1f} us); bare kernel call {row['kernel']:.2f}x; "
                f"Adam written by hand {row['arith']:.2f}x; "
                f"the check costs {row['reads']:.2f} grad reads; step {'threaded' if row['threaded'] else 'serial'}")
    return rows


def fixed_cost(suite, rounds: int, log) -> dict:
    """Target 2: median over rounds of (step - bare kernel call), 2 tensors, 650 float32: the Python around the
    kernel.  The bare call is the one the step makes (its arguments in one frame); the same kernel given its
    twelve arguments one by one (the flat ABI, what steps called before frames) is measured beside it."""
    rng = np.random.default_rng(8)
    p = [rng.standard_normal((25, 25)).astype(np.float32), rng.standard_normal(25).astype(np.float32)]
    g = [np.full_like(x, 1e-3) for x in p]
    opt = symopt.optimizer("adam", p, lr=1e-3)
    for _ in range(3):  # a few steps, as in a training loop: what step() remembers of the same grads is in place
        opt.step(g)
    args = (opt._pptr, opt._gptr, *opt._state, opt._offs, opt._chunks, opt._work, opt._scal, opt._hyp,
            opt._no_words, opt._no_steps, True)
    frame = layout.kernel_frame(np.float32, args)
    kernel, flat = opt._kernel_serial, opt._spec.module.adam_f32   # the frame twin and the flat-ABI kernel
    res = suite.measure({"step": lambda: opt.step(g), "kernel": lambda: kernel(frame), "flat": lambda: flat(*args)},
                        rounds=rounds * 3, budget=8.0)
    s = {k: np.array(v["samples"]) for k, v in res.items()}
    out = {"step": res["step"]["median"], "kernel": res["kernel"]["median"], "flat": res["flat"]["median"],
           "fixed": float(np.median(s["step"] - s["kernel"])), "fixed_flat": float(np.median(s["step"] - s["flat"]))}
    log(f"  step() on 2 tensors / 650 float32: {out['step'] * 1e6:.2f} us, bare kernel call {out['kernel'] * 1e6:.2f} us, "
        f"fixed cost {out['fixed'] * 1e6:.2f} us (median of per-round differences); the kernel given its 12 arguments "
        f"{out['flat'] * 1e6:.2f} us, the step minus that call {out['fixed_flat'] * 1e6:.2f} us")
    return out


def wake_up(suite, rounds: int, log) -> dict:
    """Target 3: one fork/join of numba's threads (prange over one element per thread, minus the serial loop),
    and what the check adds to a threaded step, which is one parallel region either way: Adam float32 at
    ``ONE_REGION_N`` elements, checked over unchecked (median of per-round ratios), the difference (median of
    per-round differences) and that difference in reads of the grad (the faster of a serial and a ``prange``
    read, same round)."""
    x = np.zeros(max(2, symopt.get_num_threads()))
    serial = _serial(_fork_join)
    rng = np.random.default_rng(9)
    p = rng.standard_normal(ONE_REGION_N).astype(np.float32)
    g = (rng.standard_normal(ONE_REGION_N) * 1e-3).astype(np.float32)
    opt = symopt.optimizer("adam", [p.copy()])
    threaded = ONE_REGION_N >= opt.parallel_threshold and symopt.get_num_threads() > 1
    read_serial = _serial(suite._read_once)
    res = suite.measure({"prange": lambda: _fork_join(x), "serial": lambda: serial(x),
                         "ignore": lambda: opt.step([g]), "check": lambda: opt.step([g]),
                         "read prange": lambda: suite._read_once(g), "read serial": lambda: read_serial(g)},
                        rounds=rounds * 2, budget=6.0, before=suite.check_modes(opt))
    s = {k: np.array(v["samples"]) for k, v in res.items()}
    cost, best = float(np.median(s["prange"] - s["serial"])), res["prange"]["min"] - res["serial"]["min"]
    read = np.minimum(s["read prange"], s["read serial"])
    out = {"fork_join": cost, "fork_join_min": best, "threads": symopt.get_num_threads(),
           "layer": numba.threading_layer(), "n": ONE_REGION_N, "threaded": threaded,
           "check_ratio": float(np.median(s["check"] / s["ignore"])),
           "check_us": float(np.median(s["check"] - s["ignore"])) * 1e6,
           "check_reads": float(np.median((s["check"] - s["ignore"]) / read))}
    log(f"  one fork/join of {out['threads']} threads: {cost * 1e6:.2f} us (median), {best * 1e6:.2f} us "
        f"(difference of the minimums); a threaded step is one parallel region, checked or not; "
        f"Adam float32 n={ONE_REGION_N} ({'threaded' if threaded else 'serial'}): checked/unchecked "
        f"{out['check_ratio']:.2f}x, +{out['check_us']:.1f} us = {out['check_reads']:.2f} grad reads")
    return out


#: The warm start, timed in the child by phase; the child's clock times (``begin``, ``ready``: after the step) split
#: the parent's wall time into interpreter start-up, the phases, and the exit (interpreter finalization).
_WARM = textwrap.dedent("""
    import time
    begin = time.time()
    t = [time.perf_counter()]
    import json, sys
    import numpy as np
    t.append(time.perf_counter())
    import numba
    t.append(time.perf_counter())
    import symopt
    t.append(time.perf_counter())
    params = [np.zeros((10, 10), np.float32), np.zeros(10, np.float32)]
    opt = symopt.optimizer("adam", params, lr=1e-3)
    t.append(time.perf_counter())
    opt.step([np.ones((10, 10), np.float32), np.ones(10, np.float32)])
    t.append(time.perf_counter())
    ready = time.time()
    assert all(np.allclose(p, -1e-3, rtol=1e-6, atol=0) for p in params)   # the kernel ran
    phases = dict(zip(("numpy", "numba", "symopt", "build", "step"), (b - a for a, b in zip(t, t[1:]))))
    print(json.dumps({"phases": {**phases, "total": t[-1] - t[0]}, "begin": begin, "ready": ready,
                      "imported": [m for m in ("sympy", "scipy.linalg", "numba.np.arraymath") if m in sys.modules]}))
""")
WARM_RUNS = 9
#: The floor of any warm start that runs numba kernels: a process that imports NumPy and numba and exits (their
#: shared libraries loaded, their objects freed at the exit).  What symopt adds is the warm start minus this.
_FLOOR = "import numpy, numba"


def warm_start(log, runs: int = WARM_RUNS) -> dict:
    """Target 4: the median wall time of ``runs`` fresh processes with warm caches (numba's and Python's
    bytecode: the first run writes them, a ``PYTHONDONTWRITEBYTECODE`` of this shell is dropped for the
    children), interleaved with bare ``python -c pass`` and with a process that imports NumPy and numba
    only (``_FLOOR``; symopt's share is the median of per-run differences); the median of each phase timed
    in the child; and the slowest imports by ``python -X importtime``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", _WARM], check=True, capture_output=True, env=env)   # warm the caches
    walls, base, floor, phases, imported, ready, exits = [], [], [], [], set(), [], []
    for _ in range(runs):
        t0, launch = time.perf_counter(), time.time()
        out = subprocess.run([sys.executable, "-c", _WARM], check=True, capture_output=True, text=True, env=env)
        walls.append(time.perf_counter() - t0)
        end = time.time()
        child = json.loads(out.stdout)
        phases.append({"start-up": child["begin"] - launch, **child["phases"]})
        ready.append(child["ready"] - launch)   # launch to the step done: what a user waits for before training
        exits.append(end - child["ready"])      # printing the result, interpreter finalization, the process reaped
        imported.update(child["imported"])
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
        base.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", _FLOOR], check=True, env=env)
        floor.append(time.perf_counter() - t0)
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", _WARM], check=True, capture_output=True,
                         text=True, env=env).stderr
    cum = {}
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(3)) <= 3:   # top-level imports and their direct children
            cum[m.group(4)] = int(m.group(2)) * 1e-6
    top = sorted(cum.items(), key=lambda kv: -kv[1])[:6]
    median = {k: float(np.median([p[k] for p in phases])) for k in phases[0]}
    out = {"seconds": float(np.median(walls)), "best": min(walls), "runs": runs, "python": float(np.median(base)),
           "floor": float(np.median(floor)), "above_floor": float(np.median(np.subtract(walls, floor))),
           "ready": float(np.median(ready)), "ready_best": min(ready), "exit": float(np.median(exits)),
           "phases": median, "sympy": "sympy" in imported, "imported": sorted(imported), "imports": top}
    log(f"  fresh process, warm cache: {out['seconds']:.2f} s median of {runs} (best {out['best']:.2f} s; bare python "
        f"{out['python']:.2f} s; a process that imports NumPy and numba only {out['floor']:.2f} s, symopt's share "
        f"above it {out['above_floor']:.2f} s): launch to the step done {out['ready']:.2f} s "
        f"(best {out['ready_best']:.2f} s), then the exit {out['exit']:.2f} s; "
        f"imported: {', '.join(out['imported']) or 'neither SymPy nor scipy.linalg'}; "
        "in the child: " + ", ".join(f"{k} {v:.3f} s" for k, v in median.items())
        + "; slowest imports (cumulative): " + ", ".join(f"{k} {v:.2f} s" for k, v in top))
    return out


def run(suite, rounds: int, log) -> dict:
    log("  (mid-size tensors: Adam, one tensor)")
    rows = midsize(suite, rounds, log)
    fixed = fixed_cost(suite, rounds, log)
    wake = wake_up(suite, rounds, log)
    warm = warm_start(log)
    return {"rows": rows, "fixed": fixed, "wake": wake, "warm": warm}


def _miss(r) -> str:
    """What a missed cell is bound by: Adam written by hand (its arithmetic), that floor plus the step beyond its
    kernel call (the unchecked step minus the bare kernel call), the kernel above its floor, or the check's reads."""
    t = TARGET[r["n"]]
    why = []
    if r["ignore"] > t:
        floor = min(r["kernel"], r["arith"])   # the kernel at (or under) Adam written by hand
        if floor >= t:
            why.append(f"Adam's arithmetic alone (written by hand) takes {floor:.2f}×")
        else:
            if r["kernel"] - r["arith"] > 0.05:
                why.append(f"the kernel is {r['kernel'] - r['arith']:.2f}× above Adam written by hand")
            if floor + r["beyond"] > t:
                why.append(f"Adam written by hand {floor:.2f}× + the step beyond its kernel call {r['beyond']:.2f}×")
    if r["check"] > t + r["read"] and r["reads"] > 1:
        why.append(f"the check takes {r['reads']:.2f} reads")
    return " **missed**" + (f": {'; '.join(why)}" if why else "")


def _cell(r) -> str:
    t = TARGET[r["n"]]
    ok_i = r["ignore"] <= t
    ok_c = r["check"] <= t + r["read"]
    return (f"{r['ignore']:.2f}× / {r['check']:.2f}× (kernel {r['kernel']:.2f}×, by hand {r['arith']:.2f}×, "
            f"check {r['reads']:.2f} reads, "
            f"{'threaded' if r['threaded'] else 'serial'})"
            + ("" if ok_i and ok_c else _miss(r)))


def report(res) -> str:
    """The issue's table (size × dtype, unchecked / checked ratio to the best same-traffic kernel) and the rows after it."""
    rows = {(r["n"], r["dtype"]): r for r in res["rows"]}
    L = ["", "## Every size at the limit (mid-size tensors, fixed cost, warm start)", "",
         "Adam, one tensor: unchecked / checked step time over the best same-traffic kernel at that size "
         "(serial or `prange` loop over the same arrays, whichever is faster in the round); medians of "
         "per-round ratios of interleaved candidates.  In parentheses: the bare compiled kernel call of the unchecked "
         "step (the step without its Python), *by hand*: Adam written by hand as a numba loop over the same arrays "
         "(torch.optim.Adam's formula, default options, serial or `prange` as faster; a kernel no faster than this "
         "is bound by Adam's arithmetic, its square root and divide among it, not by overhead), what the check "
         "costs in reads of the grad, and which kernel ran.  "
         "Targets: unchecked ≤ 1.5× (1e4), 1.3× (1e5), 1.15× (1e6); checked ≤ that plus one read.  "
         "A missed cell says what bounds it: Adam written by hand alone at or above the target (only cheaper "
         "arithmetic would close it: an approximate reciprocal square root, which changes the rounding), Adam "
         "written by hand plus the step beyond its kernel call (the unchecked step minus the bare kernel call, "
         "per round: the Python of `step()` where the kernel is short) above it (a step without Python would "
         "close it: the element function inside the user's compiled loop, `examples/numba_loop.py`), or the "
         "kernel itself above that floor.", "",
         "| size | target | float32 | float64 |", "|---|---|---|---|"]
    for n in sorted({r["n"] for r in res["rows"]}):
        cells = [_cell(rows[(n, d)]) if (n, d) in rows else "—" for d in ("float32", "float64")]
        L.append(f"| {n:.0e} | {TARGET[n]}× | " + " | ".join(cells) + " |")
    f, w, s = res["fixed"], res["wake"], res["warm"]
    L += ["", "| row | measured | target |", "|---|---|---|",
          f"| fixed cost of `step()` (2 tensors, 650 f32, minus the bare kernel call) | {f['fixed'] * 1e6:.2f} µs "
          f"(step {f['step'] * 1e6:.2f} µs, kernel {f['kernel'] * 1e6:.2f} µs; the kernel given its 12 arguments "
          f"{f['flat'] * 1e6:.2f} µs, the step minus that {f['fixed_flat'] * 1e6:.2f} µs) | ≤ {FIXED_TARGET_US:g} µs"
          + ("" if f["fixed"] * 1e6 <= FIXED_TARGET_US else " **missed**") + " |",
          f"| one fork/join of {w['threads']} threads ({w['layer']}) | {w['fork_join'] * 1e6:.2f} µs median, "
          f"{w['fork_join_min'] * 1e6:.2f} µs best | "
          "one per unchecked threaded step |",
          f"| the check in a threaded step (Adam f32, n = {w['n']}, "
          f"{'threaded' if w['threaded'] else 'serial: one thread'}; one parallel region: scan, barrier, update), "
          f"checked over unchecked | {w['check_ratio']:.2f}×, +{w['check_us']:.1f} µs = {w['check_reads']:.2f} "
          f"grad reads (medians) | one region per step; the check ≤ one read |",
          f"| warm start: fresh process, import + Adam + one step | {s['seconds']:.2f} s median of {s['runs']} "
          f"(best {s['best']:.2f} s, bare python {s['python']:.2f} s): launch to the step done {s['ready']:.2f} s "
          f"(best {s['ready_best']:.2f} s), the exit after it {s['exit']:.2f} s; a process importing NumPy and numba "
          f"only {s['floor']:.2f} s, symopt's share above that {s['above_floor']:.2f} s (median of per-run "
          f"differences); SymPy imported: {s['sympy']} | "
          f"≤ {WARM_TARGET_S:g} s, no SymPy"
          + ("" if s["seconds"] <= WARM_TARGET_S and not s["sympy"] else " **missed**") + " |",
          "", "Where the warm start goes (medians; start-up: launch to the child's first line, the phases timed in "
          "the child, then the exit: interpreter finalization, which frees numba's and NumPy's objects): "
          + ", ".join(f"{k} {v:.3f} s" for k, v in s["phases"].items()) + f", exit {s['exit']:.3f} s"
          + ".  Of SymPy, `scipy.linalg` and numba's compiler registries (`numba.np.arraymath`), imported: "
          + (", ".join(f"`{m}`" for m in s["imported"]) or "none") + ".",
          "", "Slowest imports of the warm start (cumulative, `python -X importtime`): "
          + ", ".join(f"`{k}` {v:.2f} s" for k, v in s["imports"]) + ".", ""]
    return "\n".join(L)


def main(argv=None) -> int:
    import argparse
    import importlib.util
    from pathlib import Path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 rounds instead of 20")
    ap.add_argument("--out", help="folder of results_midsize.md (default: benchmarks/)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    spec = importlib.util.spec_from_file_location("symopt_benchmarks_suite", Path(__file__).with_name("suite.py"))
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    return suite.run_alone("midsize", args)


if __name__ == "__main__":
    raise SystemExit(main())
