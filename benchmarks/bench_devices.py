"""symopt's torch and JAX backends against torch.optim and Optax, on whatever device is there.

    python benchmarks/bench_devices.py [--device cuda|cpu] [--sizes 1e6,1e7,1e8] [--rounds 15] [--quick]

AdamW (lr 1e-3, weight decay 1e-2) over

* one float32 tensor of 1e6, 1e7 and 1e8 elements (1e8 only with ``--sizes``; default on CUDA);
* the 240-tensor transformer-like mix of ``suite.py`` (~13.9 M float32 params);
* the same mix in bfloat16 params (the torch backend keeps float32 state; torch fused computes
  in float32 too);

candidates: ``symopt.torch.Optimizer("adamw", backend="torch")`` eager and compiled
(``compile=True``: one Inductor graph, Triton on CUDA, C++/OpenMP on CPU), the Numba
kernels where they apply (dense CPU float32), ``torch.optim.AdamW(fused=True)`` and
``foreach=True``; and ``symopt.jax.transform("adamw")`` against ``optax.adamw`` under
``jax.jit`` (donated params and state) on JAX's default device.  Every candidate is timed
round-robin in the same process (``suite.measure``); a row is the median over rounds of
the per-round ratio to the reference of its table (torch fused; optax.adamw), so a drift
of the machine between rounds hits both sides of each ratio alike.  Ratios > 1: the
candidate is slower than the reference.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite import measure, paired_ratio, transformer_shapes  # noqa: E402

LR, WD = 1e-3, 1e-2


def _sync(device: str):
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def torch_candidates(shapes, dtype, device, numba: bool) -> dict:
    """Step callables over copies of the same params and fixed gradients."""
    import torch

    import symopt.torch

    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(s, generator=gen).to(device=device, dtype=dtype) for s in shapes]
    grads = [(torch.randn(s, generator=gen) * 1e-3).to(device=device, dtype=dtype) for s in shapes]
    sync = _sync(device)
    out = {}

    def make(build):
        params = [p.clone() for p in base]
        for p, g in zip(params, grads):
            p.grad = g
        opt = build(params)

        def step():
            opt.step()
            sync()

        return step

    out["torch fused"] = make(lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WD, fused=True))
    out["torch foreach"] = make(lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WD, foreach=True))
    out["symopt torch eager"] = make(lambda ps: symopt.torch.Optimizer("adamw", ps, backend="torch", lr=LR,
                                                                       weight_decay=WD, on_nonfinite="ignore"))
    out["symopt torch eager, checked"] = make(lambda ps: symopt.torch.Optimizer("adamw", ps, backend="torch", lr=LR,
                                                                                weight_decay=WD))
    out["symopt torch compiled"] = make(lambda ps: symopt.torch.Optimizer(
        "adamw", ps, backend="torch", compile=True, lr=LR, weight_decay=WD, on_nonfinite="ignore"))
    out["symopt torch compiled, checked"] = make(lambda ps: symopt.torch.Optimizer(
        "adamw", ps, backend="torch", compile=True, lr=LR, weight_decay=WD))
    if numba:
        out["symopt numba"] = make(lambda ps: symopt.torch.Optimizer("adamw", ps, backend="numba", lr=LR,
                                                                     weight_decay=WD, on_nonfinite="ignore"))
        out["symopt numba, checked"] = make(lambda ps: symopt.torch.Optimizer("adamw", ps, backend="numba", lr=LR,
                                                                              weight_decay=WD))
    return out


def jax_candidates(shapes, dtype=np.float32) -> dict:
    """symopt.jax.transform("adamw") and optax.adamw, each one jitted step with donated buffers."""
    import jax
    import optax

    import symopt.jax

    rng = np.random.default_rng(0)
    params0 = [jax.device_put(rng.standard_normal(s).astype(dtype)) for s in shapes]
    grads = [jax.device_put((rng.standard_normal(s) * 1e-3).astype(dtype)) for s in shapes]
    out = {}
    for name, tx in (("optax adamw", optax.adamw(LR, weight_decay=WD)),
                     ("symopt jax", symopt.jax.transform("adamw", lr=LR, weight_decay=WD, on_nonfinite="ignore")),
                     ("symopt jax, checked", symopt.jax.transform("adamw", lr=LR, weight_decay=WD))):
        def _step(ps, st, gs, tx=tx):
            upd, st = tx.update(gs, st, ps)
            return optax.apply_updates(ps, upd), st

        jstep = jax.jit(_step, donate_argnums=(0, 1))
        ps = [p.copy() for p in params0]
        box = [ps, tx.init(ps)]

        def step(box=box, jstep=jstep):
            box[0], box[1] = jstep(box[0], box[1], grads)
            jax.block_until_ready(box)

        out[name] = step
    return out


def check_costs(res: dict) -> dict:
    """{candidate: median over rounds of its checked / unchecked time in the same round}."""
    return {name: paired_ratio(res, f"{name}, checked", name) for name in res if f"{name}, checked" in res}


def table(title: str, fns: dict, reference: str, rounds: int, log) -> list:
    res = measure(fns, rounds=rounds, budget=30.0)
    rows = [(name, paired_ratio(res, name, reference), res[name]["median"]) for name in fns]
    log(f"\n{title}: time / {reference} time (median of per-round ratios), median time per step")
    for name, ratio, t in rows:
        log(f"  {name:34s} {ratio:6.2f}   {t * 1e3:9.3f} ms")
    costs = check_costs(res)
    if costs:
        log("  cost of the check (checked / unchecked, median of per-round ratios): "
            + "  ".join(f"{k} {v:.2f}" for k, v in costs.items()))
    return rows


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default=None, help="comma-separated element counts (default 1e6,1e7[,1e8 on CUDA])")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="1e6 only, 5 rounds, no 240-tensor tables")
    p.add_argument("--no-jax", action="store_true")
    args = p.parse_args(argv)
    device = args.device
    cuda = device.startswith("cuda")
    sizes = ([int(float(x)) for x in args.sizes.split(",")] if args.sizes
             else [10 ** 6] if args.quick else [10 ** 6, 10 ** 7] + ([10 ** 8] if cuda else []))
    rounds = 5 if args.quick else args.rounds
    log = print
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    log(f"bench_devices: torch {torch.__version__} on {device} ({name})")
    for n in sizes:
        table(f"AdamW, one float32 tensor of {n:.0e} on {device}",
              torch_candidates([(n,)], torch.float32, device, numba=not cuda), "torch fused", rounds, log)
    if not args.quick:
        shapes = transformer_shapes()
        total = sum(math.prod(s) for s in shapes)
        table(f"AdamW, {len(shapes)} tensors ({total / 1e6:.1f} M float32 params) on {device}",
              torch_candidates(shapes, torch.float32, device, numba=not cuda), "torch fused", rounds, log)
        bf16 = {k: v for k, v in torch_candidates(shapes, torch.bfloat16, device, numba=False).items()
                if k != "torch foreach"}
        table(f"AdamW, {len(shapes)} tensors, bfloat16 params on {device}", bf16, "torch fused", rounds, log)
    if not args.no_jax:
        import jax

        log(f"\nJAX {jax.__version__} on {jax.devices()[0]}")
        for n in sizes:
            table(f"AdamW under jax.jit, one float32 array of {n:.0e}", jax_candidates([(n,)]), "optax adamw",
                  rounds, log)
        if not args.quick:
            table("AdamW under jax.jit, 240 arrays", jax_candidates(transformer_shapes()), "optax adamw", rounds, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
