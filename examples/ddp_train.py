"""Data-parallel training with ``symopt.torch.Optimizer`` under DistributedDataParallel (CPU, gloo).

One machine, no launcher (torch.multiprocessing.spawn; all traffic on 127.0.0.1)::

    python examples/ddp_train.py                         # 2 processes, adam, float64
    python examples/ddp_train.py --nproc 4 --rule nadam --lr 3e-3 --steps 300 --dtype float32

With torchrun, on one machine or several (torchrun sets RANK, WORLD_SIZE, MASTER_ADDR...)::

    torchrun --nproc-per-node 2 examples/ddp_train.py
    # on each of 2 machines (node ranks 0 and 1), HOST0 reachable from both:
    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d \
             --rdzv-endpoint HOST0:29500 --rdzv-id digits examples/ddp_train.py

Every process holds a full replica of a small MLP on the digits data set
(scikit-learn's bundled copy) and takes its share of each global minibatch.  DDP
all-reduces (averages) the gradients during ``backward()``, so every rank hands the
same averaged gradient to its own ``symopt.torch.Optimizer``, whose kernel then
applies the same update: the parameters stay identical on every rank, and equal to
one process training on the whole global batch.  symopt adds nothing to the
communication (that is DDP's); it replaces the optimizer step in every process.
After each step the example gathers every rank's parameters and checks that they
are bit-for-bit equal.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import symopt
from symopt.torch import Optimizer

DEFAULTS = dict(rule="adam", lr=1e-2, steps=50, batch=64, dtype="float64", seed=0, hyper={})


def load_digits(dtype):
    """The 8x8 digits (1797 images, scikit-learn's bundled copy: no download), pixels in [0, 1]."""
    from sklearn.datasets import load_digits as _load

    x, y = _load(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=dtype), torch.tensor(y)


def make_model(dtype, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)).to(dtype)


def global_batches(n, steps, batch, seed=0):
    """The index tensor of every global minibatch (the same on every rank)."""
    g = torch.Generator().manual_seed(seed + 1)
    return [torch.randperm(n, generator=g)[:batch] for _ in range(steps)]


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def make_optimizer(params, cfg, torch_class=None):
    if torch_class is not None:
        return getattr(torch.optim, torch_class)(params, lr=cfg["lr"], **cfg["hyper"])
    return Optimizer(cfg["rule"], params, lr=cfg["lr"], **cfg["hyper"])


def train_single(cfg, torch_class=None):
    """One process on the whole global batch: the reference trajectory (one row of params per step)."""
    cfg = {**DEFAULTS, **cfg}
    dtype = getattr(torch, cfg["dtype"])
    x, y = load_digits(dtype)
    model = make_model(dtype, cfg["seed"])
    opt = make_optimizer(model.parameters(), cfg, torch_class)
    rows = []
    for idx in global_batches(len(x), cfg["steps"], cfg["batch"], cfg["seed"]):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        rows.append(flat_params(model))
    return torch.stack(rows)


def train_rank(rank, world_size, cfg, data=None, verbose=True):
    """The body of one DDP process (the process group is already initialized); ``data`` = (x, y) or loaded."""
    cfg = {**DEFAULTS, **cfg}
    dtype = getattr(torch, cfg["dtype"])
    x, y = data if data is not None else load_digits(dtype)
    model = torch.nn.parallel.DistributedDataParallel(make_model(dtype, cfg["seed"]),
                                                      gradient_as_bucket_view=True)
    opt = make_optimizer(model.parameters(), cfg)
    share = cfg["batch"] // world_size
    rows, max_rank_diff = [], 0.0
    gathered = None
    for step, idx in enumerate(global_batches(len(x), cfg["steps"], cfg["batch"], cfg["seed"])):
        mine = idx[rank * share:(rank + 1) * share]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[mine]), y[mine])
        loss.backward()                       # DDP averages the gradients over the ranks here
        opt.step()                            # symopt's kernel, in every process
        flat = flat_params(model.module)
        if gathered is None:
            gathered = [torch.empty_like(flat) for _ in range(world_size)]
        dist.all_gather(gathered, flat)
        diff = max(float((g - flat).abs().max()) for g in gathered)
        max_rank_diff = max(max_rank_diff, diff)
        rows.append(flat)
        if verbose and rank == 0 and (step % 10 == 0 or step == cfg["steps"] - 1):
            print(f"step {step + 1:4d}  loss (rank 0's share) {loss.item():.4f}  "
                  f"max |param difference between ranks| {diff:.1e}", flush=True)
    with torch.no_grad():
        accuracy = (model.module(x).argmax(1) == y).double().mean().item()
    return {"trajectory": torch.stack(rows), "max_rank_diff": max_rank_diff, "accuracy": accuracy,
            "world_size": world_size}


def _loopback_interface():
    for _, name in socket.if_nameindex():
        if name in ("lo", "lo0"):
            return name
    return None


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the OS picks it)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_loopback(rank, world_size, port, timeout=datetime.timedelta(seconds=60)):
    """A process group whose rendezvous store and gloo connections listen on 127.0.0.1 only."""
    iface = _loopback_interface()
    if iface is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = iface       # gloo's pairs bind the loopback address
    listener = None
    if rank == 0:
        # TCPStore would listen on every interface; hand it a socket bound to 127.0.0.1 instead
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(world_size)
        store = dist.TCPStore("127.0.0.1", port, world_size, True, timeout=timeout,
                              master_listen_fd=listener.fileno())
    else:
        store = dist.TCPStore("127.0.0.1", port, world_size, False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
    return listener


def _threads_per_process(nproc: int) -> int:
    """Cores per local process: torch's and symopt's thread pools would otherwise oversubscribe the CPU."""
    return max(1, (os.cpu_count() or 1) // nproc)


def _spawned(rank, world_size, port, cfg, data, out_dir, verbose):
    torch.set_num_threads(_threads_per_process(world_size))
    symopt.set_num_threads(_threads_per_process(world_size))
    listener = _init_loopback(rank, world_size, port)
    try:
        result = train_rank(rank, world_size, cfg, data, verbose)
        if rank == 0 and out_dir is not None:
            torch.save(result, os.path.join(out_dir, "rank0.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
        if listener is not None:
            listener.close()


def spawn(world_size, cfg, out_dir, verbose=False):
    """Train with ``world_size`` local processes (torch.multiprocessing.spawn); rank 0's results.

    The data is loaded here once and shared with the processes (torch shares the
    tensors' memory), so the children do not import scikit-learn.
    """
    data = load_digits(getattr(torch, {**DEFAULTS, **cfg}["dtype"]))
    mp.spawn(_spawned, args=(world_size, free_port(), cfg, data, str(out_dir), verbose), nprocs=world_size,
             join=True)
    return torch.load(os.path.join(out_dir, "rank0.pt"), weights_only=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=2, help="local processes when not launched by torchrun")
    ap.add_argument("--rule", default=DEFAULTS["rule"], help="a symopt rule name (symopt list)")
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    ap.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="global batch (split over the ranks)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default=DEFAULTS["dtype"])
    args = ap.parse_args(argv)
    cfg = dict(rule=args.rule, lr=args.lr, steps=args.steps, batch=args.batch, dtype=args.dtype)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:      # launched by torchrun
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(_threads_per_process(local))
        symopt.set_num_threads(_threads_per_process(local))
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if args.batch % world:
            raise SystemExit(f"--batch {args.batch} is not divisible by the world size {world}")
        result = train_rank(rank, world, cfg)
        dist.destroy_process_group()
    else:
        import tempfile

        if args.batch % args.nproc:
            raise SystemExit(f"--batch {args.batch} is not divisible by --nproc {args.nproc}")
        with tempfile.TemporaryDirectory() as tmp:
            result = spawn(args.nproc, cfg, tmp, verbose=True)
        rank = 0
    if rank == 0:
        single = train_single(cfg)
        err = float(((result["trajectory"] - single).abs().amax(1) / single.abs().amax(1)).max())
        print(f"{result['world_size']} processes, rule {cfg['rule']!r}, {cfg['dtype']}: params identical on every "
              f"rank after every step: {result['max_rank_diff'] == 0.0} (max difference "
              f"{result['max_rank_diff']:.1e}); vs one process on the global batch: max relative difference "
              f"{err:.1e}; training accuracy {result['accuracy']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
