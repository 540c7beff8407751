"""symopt.torch.Optimizer in a PyTorch training step, against torch.optim.Adam (fused and foreach).

    python benchmarks/bench_torch_adapter.py [--rounds 12] [--threads N] [--quick]

For each model (CPU, float32) and each optimizer -- ``symopt.torch.Optimizer("adam")``
with the default finiteness check (``on_nonfinite="raise"``) and without it
(``"ignore"``, what torch does), ``torch.optim.Adam(fused=True)`` and
``torch.optim.Adam()`` (torch's default, the foreach path on CPU) -- it times

* the optimizer step alone: ``opt.step()`` with fixed gradients, and
* the whole training step: ``zero_grad()``, forward, cross-entropy, ``backward()``,
  ``step()`` on a fixed minibatch of 64.

Every candidate runs on its own copy of the model (same initial weights), timed
round-robin in one process (a drift of the shared machine hits all alike), in
batches lasting >= 0.2 ms; a candidate's time is its minimum over rounds.  Ratios
are torch's time / symopt's time (> 1: symopt is faster).  ``run()`` returns the
rows (dicts) so that the main suite (``symopt bench``) can include them.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from symopt.torch import Optimizer

#: (label, layer widths) of the MLPs measured (ReLU between layers).
MODELS = [("MLP 64-128-10", (64, 128, 10)), ("MLP 784-512-512-10", (784, 512, 512, 10))]
BATCH = 64
LR = 1e-3


def _mlp(widths, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def _candidates(model):
    return {
        "symopt": lambda ps: Optimizer("adam", ps, lr=LR),
        "symopt_ignore": lambda ps: Optimizer("adam", ps, lr=LR, on_nonfinite="ignore"),
        "torch_fused": lambda ps: torch.optim.Adam(ps, lr=LR, fused=True),
        "torch_foreach": lambda ps: torch.optim.Adam(ps, lr=LR),
    }


def _time(fns: dict, rounds: int, min_batch: float = 2e-4) -> dict:
    """Seconds per call of each callable: minimum over round-robin rounds of batched calls."""
    reps = {}
    for name, fn in fns.items():
        fn()
        n, t = 1, 0.0
        while True:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            t = time.perf_counter() - t0
            if t >= min_batch:
                break
            n *= 2
        reps[name] = n
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = reps[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / n)
    return best


def run(rounds: int = 12, threads: int | None = None, quick: bool = False, log=print) -> list:
    """Rows ``{"model", "params", "tensors", "what", "<candidate>_us", "fused_ratio", "foreach_ratio", ...}``."""
    if threads is not None:
        torch.set_num_threads(threads)
    rows = []
    models = MODELS[:1] if quick else MODELS
    for label, widths in models:
        base = _mlp(widths)
        n_params = sum(p.numel() for p in base.parameters())
        n_tensors = len(list(base.parameters()))
        g = torch.Generator().manual_seed(1)
        x = torch.randn(BATCH, widths[0], generator=g)
        y = torch.randint(0, widths[-1], (BATCH,), generator=g)
        setups = {}
        for name, make in _candidates(base).items():
            model = copy.deepcopy(base)
            opt = make(model.parameters())
            setups[name] = (model, opt)

        # the optimizer step alone, fixed gradients
        for model, opt in setups.values():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
        step = _time({name: opt.step for name, (model, opt) in setups.items()}, rounds)

        # the whole training step
        def train_step(model, opt):
            def fn():
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            return fn
        train = _time({name: train_step(*mo) for name, mo in setups.items()}, rounds)

        for what, res in (("optimizer step", step), ("training step", train)):
            row = {"model": label, "params": n_params, "tensors": n_tensors, "dtype": "float32", "batch": BATCH,
                   "what": what, "threads": torch.get_num_threads(), "rule": "adam"}
            row.update({f"{k}_us": v * 1e6 for k, v in res.items()})
            row["fused_ratio"] = res["torch_fused"] / res["symopt"]
            row["foreach_ratio"] = res["torch_foreach"] / res["symopt"]
            row["fused_ratio_ignore"] = res["torch_fused"] / res["symopt_ignore"]
            rows.append(row)
            log(f"  {label} ({n_params} params, {n_tensors} tensors), {what}: symopt {row['symopt_us']:.1f} us "
                f"(no check {row['symopt_ignore_us']:.1f}), torch fused {row['torch_fused_us']:.1f} us, "
                f"foreach {row['torch_foreach_us']:.1f} us -> fused/symopt {row['fused_ratio']:.2f}x, "
                f"foreach/symopt {row['foreach_ratio']:.2f}x")
    return rows


def table(rows) -> str:
    """A Markdown table of :func:`run`'s rows."""
    head = ("| model | params | measured | symopt (µs) | symopt, no check (µs) | torch fused (µs) | "
            "torch foreach (µs) | fused / symopt | foreach / symopt |\n|---|---:|---|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']} | {r['what']} | {r['symopt_us']:.1f} | "
                     f"{r['symopt_ignore_us']:.1f} | {r['torch_fused_us']:.1f} | {r['torch_foreach_us']:.1f} | "
                     f"{r['fused_ratio']:.2f}× | {r['foreach_ratio']:.2f}× |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="the small MLP only, 5 rounds")
    args = ap.parse_args(argv)
    rows = run(rounds=5 if args.quick else args.rounds, threads=args.threads, quick=args.quick)
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
