"""Sharded optimizer state with ``symopt.torch.Optimizer``: ZeRO-1 and FSDP2, with DCP checkpoints (CPU, gloo).

One machine, no launcher (torch.multiprocessing.spawn; all traffic on 127.0.0.1)::

    python examples/sharded_train.py                          # both engines, 2 processes, adam, float64
    python examples/sharded_train.py --engine fsdp --nproc 4 --rule nadam --dtype float32

With torchrun (one machine or several; see docs/torch.md)::

    torchrun --nproc-per-node 2 examples/sharded_train.py --engine fsdp --checkpoint /shared/ckpt
    torchrun --nproc-per-node 3 examples/sharded_train.py --engine fsdp --checkpoint /shared/ckpt --resume

The digits MLP of ``examples/ddp_train.py``; each rank takes its share of every global minibatch.

* ``zero``: ``torch.distributed.optim.ZeroRedundancyOptimizer(params, optimizer_class=Optimizer,
  rule=..., lr=...)`` over a DDP model.  Each rank builds a ``symopt.torch.Optimizer`` over its
  partition of the params and steps only those; ZeRO broadcasts the updated params.
  ``consolidate_state_dict()`` + ``state_dict()`` on rank 0 give one torch.optim-format dict
  that a single-process optimizer (symopt's or torch's) loads.
* ``fsdp``: ``torch.distributed.fsdp.fully_shard`` turns every param into a DTensor sharded
  on dim 0; ``Optimizer(rule, model.parameters())`` steps each rank's local shards in place
  (the update is elementwise: no communication) and keeps the state as DTensors with the
  same placements, so ``torch.distributed.checkpoint`` saves it sharded
  (``get_optimizer_state_dict``) and loads it on any number of ranks (``set_optimizer_state_dict``).
  Rules with per-tensor reductions (LAMB, LARS...) are refused on sharded params.

Every run records the full params after each step, so it can be compared with one process
training on the whole global batch (``train_single``), with symopt or torch.optim.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ddp_train import _init_loopback, _threads_per_process, free_port, global_batches, load_digits, make_model

import symopt
from symopt.torch import Optimizer

DEFAULTS = dict(rule="adam", lr=1e-2, steps=20, batch=64, dtype="float64", seed=0, hyper={}, torch_class=None,
                save_at=None, resume_from=None)


def flat_full(model):
    """Every param in full (DTensors gathered: a collective, every rank calls it), one flat row."""
    return torch.cat([(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().reshape(-1)
                      for p in model.parameters()])


def _loss(model, x, y, idx):
    return torch.nn.functional.cross_entropy(model(x[idx]), y[idx])


def make_optimizer(params, cfg):
    if cfg["torch_class"]:
        return getattr(torch.optim, cfg["torch_class"])(params, lr=cfg["lr"], foreach=False, **cfg["hyper"])
    return Optimizer(cfg["rule"], params, lr=cfg["lr"], **cfg["hyper"])


def train_single(cfg, data, start=None):
    """One process on the whole global batch: one row of params per step.  ``start``: (model state dict,
    optimizer state dict, first step) to resume from."""
    cfg = {**DEFAULTS, **cfg}
    x, y = data
    model = make_model(x.dtype, cfg["seed"])
    opt = make_optimizer(model.parameters(), cfg)
    first = 0
    if start is not None:
        model.load_state_dict(start[0])
        opt.load_state_dict(start[1])
        first = start[2]
    rows = []
    for idx in global_batches(len(x), cfg["steps"], cfg["batch"], cfg["seed"])[first:]:
        opt.zero_grad()
        _loss(model, x, y, idx).backward()
        opt.step()
        rows.append(flat_full(model))
    return torch.stack(rows), opt


def train_zero(rank, world, cfg, data):
    """ZeRO-1 over DDP: each rank's symopt (or torch.optim) optimizer steps its partition of the params."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    x, y = data
    model = torch.nn.parallel.DistributedDataParallel(make_model(x.dtype, cfg["seed"]))
    if cfg["torch_class"]:
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=getattr(torch.optim, cfg["torch_class"]),
                                      lr=cfg["lr"], foreach=False, **cfg["hyper"])
    else:
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=Optimizer, rule=cfg["rule"],
                                      lr=cfg["lr"], **cfg["hyper"])
    share = cfg["batch"] // world
    rows = []
    for idx in global_batches(len(x), cfg["steps"], cfg["batch"], cfg["seed"]):
        opt.zero_grad()
        _loss(model, x, y, idx[rank * share:(rank + 1) * share]).backward()
        opt.step()
        rows.append(flat_full(model.module))
    opt.consolidate_state_dict(to=0)
    owned = sum(len(g["params"]) for g in opt.optim.param_groups)
    return {"trajectory": torch.stack(rows), "owned": owned,
            "state_dict": opt.state_dict() if rank == 0 else None}


def train_fsdp(rank, world, cfg, data):
    """FSDP2: DTensor params sharded on dim 0, the optimizer steps the local shards.  ``save_at``: write a DCP
    checkpoint (model and optimizer, sharded) after that many steps into ``cfg["checkpoint"]``;
    ``resume_from``: start from such a checkpoint (saved with any number of ranks)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.fsdp import fully_shard

    x, y = data
    model = make_model(x.dtype, cfg["seed"])
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = make_optimizer(model.parameters(), cfg)
    batches = global_batches(len(x), cfg["steps"], cfg["batch"], cfg["seed"])
    first = 0
    if cfg["resume_from"] is not None:
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
        dcp.load(state, checkpoint_id=cfg["resume_from"])
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, opt, state["optim"])
        first = cfg["save_at"]
    share = cfg["batch"] // world
    rows = []
    for step, idx in enumerate(batches[first:], start=first):
        opt.zero_grad()
        _loss(model, x, y, idx[rank * share:(rank + 1) * share]).backward()
        opt.step()
        rows.append(flat_full(model))
        if cfg["save_at"] == step + 1 and cfg["resume_from"] is None and cfg.get("checkpoint"):
            dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
                     checkpoint_id=cfg["checkpoint"])
    local_state = [v for p in model.parameters() for v in opt.state[p].values() if v.dim()]
    return {"trajectory": torch.stack(rows),
            "state_is_sharded": all(type(v).__name__ == "DTensor" for v in local_state) and bool(local_state)}


def resume_single(cfg, data, checkpoint):
    """Resume a DCP checkpoint written by any number of ranks in this one process (no process group): a plain
    model and optimizer, DCP reassembles every shard; returns the params after each remaining step."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    cfg = {**DEFAULTS, **cfg}
    x, y = data
    model = make_model(x.dtype, cfg["seed"])
    opt = make_optimizer(model.parameters(), cfg)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(state, checkpoint_id=checkpoint, no_dist=True)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    rows = []
    for idx in global_batches(len(x), cfg["steps"], cfg["batch"], cfg["seed"])[cfg["save_at"]:]:
        opt.zero_grad()
        _loss(model, x, y, idx).backward()
        opt.step()
        rows.append(flat_full(model))
    return torch.stack(rows)


ENGINES = {"zero": train_zero, "fsdp": train_fsdp}


def _spawned(rank, world, port, runs, data, out_dir):
    torch.set_num_threads(_threads_per_process(world))
    symopt.set_num_threads(_threads_per_process(world))
    listener = _init_loopback(rank, world, port)
    try:
        results = {}
        for name, (engine, cfg) in runs.items():
            dtype = getattr(torch, cfg["dtype"])
            results[name] = ENGINES.get(engine, engine)(rank, world, {**DEFAULTS, **cfg}, tuple(t.to(dtype) if t.is_floating_point()
                                                                                     else t for t in data))
            dist.barrier()
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "rank0.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
        if listener is not None:
            listener.close()


def spawn(world, runs, out_dir, data=None):
    """Run ``runs`` ({name: (engine, cfg)}; an engine is a name in ENGINES or a function of (rank, world, cfg,
    data)) in order in ``world`` local processes; rank 0's results by name."""
    data = load_digits(torch.float64) if data is None else data
    mp.spawn(_spawned, args=(world, free_port(), runs, data, str(out_dir)), nprocs=world, join=True)
    return torch.load(os.path.join(out_dir, "rank0.pt"), weights_only=False)


def _rel(a, b):
    return float(((a - b).abs().amax(-1) / b.abs().amax(-1)).max())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=["zero", "fsdp", "both"], default="both")
    ap.add_argument("--nproc", type=int, default=2, help="local processes when not launched by torchrun")
    ap.add_argument("--rule", default=DEFAULTS["rule"], help="a symopt rule name (symopt list)")
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    ap.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="global batch (split over the ranks)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default=DEFAULTS["dtype"])
    ap.add_argument("--checkpoint", default=None, help="fsdp: a DCP checkpoint folder, written halfway")
    ap.add_argument("--resume", action="store_true",
                    help="fsdp: start halfway from --checkpoint (written by a run with any number of ranks)")
    args = ap.parse_args(argv)
    if args.resume and (not args.checkpoint or args.engine != "fsdp"):
        raise SystemExit("--resume needs --engine fsdp and --checkpoint")
    cfg = dict(rule=args.rule, lr=args.lr, steps=args.steps, batch=args.batch, dtype=args.dtype)
    if args.checkpoint:
        cfg.update(checkpoint=args.checkpoint, save_at=args.steps // 2,
                   resume_from=args.checkpoint if args.resume else None)
    engines = ["zero", "fsdp"] if args.engine == "both" else [args.engine]
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:      # launched by torchrun
        torch.set_num_threads(_threads_per_process(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        data = tuple(t.to(getattr(torch, args.dtype)) if t.is_floating_point() else t
                     for t in load_digits(torch.float64))
        results = {e: ENGINES[e](rank, world, {**DEFAULTS, **cfg}, data) for e in engines}
        dist.destroy_process_group()
    else:
        rank, world = 0, args.nproc
        with tempfile.TemporaryDirectory() as tmp:
            results = spawn(world, {e: (e, cfg) for e in engines}, tmp)
        data = tuple(t.to(getattr(torch, args.dtype)) if t.is_floating_point() else t
                     for t in load_digits(torch.float64))
    if rank == 0:
        single, _ = train_single(cfg, data)
        if args.resume:
            single = single[cfg["save_at"]:]
        for e in engines:
            print(f"{e}: {world} processes, rule {args.rule!r}, {args.dtype}{', resumed halfway' * args.resume}: max "
                  f"relative difference per step from one process on the global batch "
                  f"{_rel(results[e]['trajectory'], single):.1e}")


if __name__ == "__main__":
    sys.exit(main())
