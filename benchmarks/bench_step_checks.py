"""The fixed cost of ``Optimizer.step`` with its safety checks, against the step of another revision.

    python benchmarks/bench_step_checks.py [--base main] [--rounds 40] [--fixed]

The checks of a step that guard memory (every param still at the buffer and shape it had when the
optimizer was built; no gradient overlapping a param or another gradient) run on every call, so
their cost is measured on the smallest models, where the fixed cost dominates: 3 float32 tensors
of 425 and of 11.5 k elements.  The candidate "base" is ``symopt/runtime/optimizer.py`` and
``generated/adam.py`` of the revision ``--base`` (read with ``git show``; the module runs from memory,
compiled without numba's disk cache), loaded beside the current ones in the same process: the ratio
measures the Python around the kernel and the kernel's calling convention, whose arguments
changed with the revisions (the per-step scalars moved into the kernel).

With ``--fixed``: the fixed cost of each (2 tensors, 650 float32, the same grads; step minus the bare
kernel call of that revision in the same round, as ``symopt bench --only midsize`` takes it), two
optimizers of each revision, and the median of per-round ratios of those fixed costs.

Two ways of passing gradients: the same arrays at every step (the overlap check is skipped: the
addresses were checked before), and two sets of arrays in turn (new addresses at every step: the
overlap check runs every time).  Every candidate is timed round-robin in one process, in batches;
a ratio is the median over rounds of current / base in the same round (benchmarks/suite.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

import symopt.runtime  # noqa: F401  (the package the base module is loaded into)
from symopt.runtime import kernels, layout
from symopt.runtime import optimizer as current

HERE = Path(__file__).resolve().parent
MODELS = {"3 tensors, 425 elements": [(20, 20), (20,), (5,)],
          "3 tensors, 11.5k elements": [(100, 110), (110,), (390,)]}


def _suite():
    spec = importlib.util.spec_from_file_location("symopt_benchmarks_suite", HERE / "suite.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _show(rev: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=HERE.parent, check=True, capture_output=True,
                          text=True).stdout


def base_module(rev: str) -> types.ModuleType:
    """``symopt/runtime/optimizer.py`` of revision ``rev``, as a module of the package ``symopt.runtime``."""
    source = _show(rev, "symopt/runtime/optimizer.py")
    mod = types.ModuleType("symopt.runtime._optimizer_base")
    mod.__package__ = "symopt.runtime"
    sys.modules[mod.__name__] = mod
    exec(compile(source, f"<{rev}:symopt/runtime/optimizer.py>", "exec"), mod.__dict__)
    return mod


def base_rule(rev: str) -> types.ModuleType:
    """``generated/adam.py`` of revision ``rev`` (its kernels in that revision's calling convention), run from
    memory as the runtime runs a user module without a cache folder (:func:`symopt.runtime.kernels.execute`)."""
    text = _show(rev, "generated/adam.py")
    digest = re.search(r"^INPUT_HASH = '([0-9a-f]+)'$", text, re.M).group(1)
    checked = types.SimpleNamespace(name="adam", text=text, digest=digest, path=None)
    return kernels.execute(checked, "symopt_bench_base")


def candidates(module, shapes, alternate: bool, rule="adam"):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    sets = [[(rng.standard_normal(s) * 1e-3).astype(np.float32) for s in shapes] for _ in range(2)]
    opt = module.Optimizer(rule, params)
    state = {"k": 0}

    def step():
        k = state["k"] = state["k"] ^ 1 if alternate else 0
        opt.step(sets[k])

    return step


def bare_call(opt):
    """The optimizer's serial kernel with its arguments as ``_step_all`` passes them, but nothing to compare
    and no step counts to advance (named by the kernel's parameters: the revisions' signatures differ)."""
    kernel = opt._kernel_serial
    names = list(inspect.signature(kernel.py_func).parameters)
    given = {"pptr": opt._pptr, "gptr": opt._gptr, "offs": opt._offs, "chunks": opt._chunks, "work": opt._work,
             "scal": opt._scal, "hyp": opt._hyp, "words": np.empty((2, 0), dtype=np.int64),
             "steps": np.empty(0, dtype=np.int64), "check": True}
    if names == ["frame"]:  # a revision whose optimizer calls the flat kernel's frame twin
        args = (opt._pptr, opt._gptr, *opt._state, *(given[n] for n in ("offs", "chunks", "work", "scal", "hyp",
                                                                        "words", "steps", "check")))
        frame = layout.kernel_frame(opt.dtype, args)
        return lambda: kernel(frame)
    states = iter(opt._state)
    args = tuple(given[n] if n in given else next(states) for n in names)
    return lambda: kernel(*args)


def fixed_costs(suite, base, base_rule, rounds: int) -> None:
    """Step minus the bare kernel call, this tree against ``base``, 2 tensors of 650 float32 in all."""
    fns = {}
    for i in range(2):
        for name, module, rule in (("current", current, "adam"), ("base", base, base_rule)):
            rng = np.random.default_rng(8)
            p = [rng.standard_normal((25, 25)).astype(np.float32), rng.standard_normal(25).astype(np.float32)]
            g = [np.full_like(x, 1e-3) for x in p]
            opt = module.Optimizer(rule, p, lr=1e-3)
            for _ in range(20):  # untimed: what step() remembers of the same grads is in place
                opt.step(g)
            fns[f"{name} {i} step"] = lambda opt=opt, g=g: opt.step(g)
            fns[f"{name} {i} kernel"] = bare_call(opt)
    res = suite.measure(fns, rounds=rounds, budget=30.0)
    s = {k: np.array(v["samples"]) for k, v in res.items()}
    fixed = {n: np.concatenate([s[f"{n} {i} step"] - s[f"{n} {i} kernel"] for i in range(2)])
             for n in ("current", "base")}
    print(f"  fixed cost (2 tensors, 650 float32, same grads): current {np.median(fixed['current']) * 1e6:.2f} us, "
          f"base {np.median(fixed['base']) * 1e6:.2f} us, ratio {np.median(fixed['current'] / fixed['base']):.3f} "
          f"(median of per-round ratios)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="main", help="git revision whose optimizer.py is the base (default main)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--instances", type=int, default=4, help="optimizers of each candidate (default 4)")
    ap.add_argument("--fixed", action="store_true", help="only the fixed cost: step minus the bare kernel call")
    args = ap.parse_args(argv)
    suite = _suite()
    base = base_module(args.base)
    rules = {current: "adam", base: base_rule(args.base)}
    if args.fixed:
        print(f"step fixed cost, current tree / {args.base} ({args.rounds} rounds)")
        fixed_costs(suite, base, rules[base], args.rounds)
        return 0
    print(f"step fixed cost, current tree / {args.base} (median of per-round ratios, {args.rounds} rounds)")
    for label, shapes in MODELS.items():
        for alternate in (False, True):
            # Several instances of each, built in alternating order: where the arrays land in memory
            # changes one instance's time by up to 1.5x (base against base shows it), so a ratio is the
            # median over instance pairs and rounds.
            fns = {}
            for module in (current, base):  # untimed: the first optimizers built measured up to 1.8x slower
                candidates(module, shapes, alternate, rules[module])()
            for i in range(args.instances):
                order = ("current", "base") if i % 2 == 0 else ("base", "current")
                for name in order:
                    module = current if name == "current" else base
                    fns[f"{name} {i}"] = candidates(module, shapes, alternate, rules[module])
            for f in fns.values():  # untimed steps: what each remembers of the grads it was given is in place
                for _ in range(20):
                    f()
            res = suite.measure(fns, rounds=args.rounds, budget=60.0)
            ratios = np.concatenate([np.array(res[f"current {i}"]["samples"]) / np.array(res[f"base {i}"]["samples"])
                                     for i in range(args.instances)])
            med = {n: np.median([res[f"{n} {i}"]["median"] for i in range(args.instances)]) for n in ("current", "base")}
            how = "two grad sets in turn" if alternate else "same grads"
            print(f"  {label:28s} {how:22s} current {med['current'] * 1e6:6.2f} us  base {med['base'] * 1e6:6.2f} us"
                  f"  ratio {np.median(ratios):.3f} (instance pairs: "
                  + " ".join(f"{suite.paired_ratio(res, f'current {i}', f'base {i}'):.2f}" for i in range(args.instances))
                  + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
