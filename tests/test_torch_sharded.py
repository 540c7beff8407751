"""symopt.torch.Optimizer with sharded optimizer state: ZeRO-1, FSDP2 (DTensor params), DCP checkpoints.

2 processes, gloo, 127.0.0.1 only, one spawn for every run (``examples/sharded_train.py``): the
digits MLP, global batch 64 split 32/32, 10 steps of adam, float32 and float64.

* ZeroRedundancyOptimizer(optimizer_class=symopt.torch.Optimizer, rule="adam"): the trajectory
  equals the same ZeRO run with torch.optim.Adam and one process on the global batch; the
  consolidated state dict loads into a single-process optimizer whose state equals the
  single-process run's.
* fully_shard (FSDP2): params are DTensors sharded on dim 0; the state is kept as DTensors; the
  trajectory equals FSDP2 with torch.optim.Adam and one process on the global batch.
* DTensor params made with distribute_tensor: Shard(0) with adam equals torch.optim.Adam on the
  full tensors; Replicate() with lamb equals lamb on plain tensors; LAMB (per-tensor norms) over
  Shard(0) params is refused, naming the reason.
* DCP: the FSDP2 run saves model and optimizer (get_optimizer_state_dict, sharded) after 5 steps;
  resumed on 2 ranks and on 1 (this process, no process group) it continues as the run that
  was not interrupted.

Tolerances (relative max-norm difference per step): float64 1e-12 (only the order of the
gradient sums differs), float32 2e-5.
"""
import pathlib
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")       # the digits data set

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
RTOL = {"float32": 2e-5, "float64": 1e-12}
BASE = dict(rule="adam", lr=1e-2, steps=10, batch=64, hyper={"weight_decay": 1e-3})
SAVE_AT = 5


@pytest.fixture(scope="module")
def sharded():
    sys.path.insert(0, str(EXAMPLES))        # spawned children inherit sys.path
    try:
        import sharded_train
        yield sharded_train
    finally:
        sys.path.remove(str(EXAMPLES))


def dtensor_checks(rank, world, cfg, data):
    """DTensor params made directly (distribute_tensor; run in each spawned process): Shard(0) params stepped
    by adam against torch.optim.Adam on the full tensors; Replicate() params stepped by lamb (per-tensor norms
    of whole tensors) against lamb on plain tensors; lamb on Shard(0) params refused."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

    from symopt.torch import Optimizer

    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(7)                 # the same numbers on every rank
    full = [torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)]
    grads = [[torch.randn_like(t) for t in full] for _ in range(4)]
    out = {}
    for rule, placement, reference in (("adam", Shard(0), "Adam"), ("lamb", Replicate(), None)):
        ps = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, [placement])) for t in full]
        plain = [torch.nn.Parameter(t.clone()) for t in full]
        opt = Optimizer(rule, ps, lr=1e-2)
        ref = (getattr(torch.optim, reference)(plain, lr=1e-2, foreach=False) if reference
               else Optimizer(rule, plain, lr=1e-2))
        for step_grads in grads:
            for p, q, x in zip(ps, plain, step_grads):
                p.grad, q.grad = distribute_tensor(x.clone(), mesh, [placement]), x.clone()
            opt.step(), ref.step()
        out[rule] = max(_rel(p.full_tensor().reshape(1, -1), q.detach().reshape(1, -1)) for p, q in zip(ps, plain))
    sharded = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, [Shard(0)])) for t in full]
    try:
        Optimizer("lamb", sharded)
        out["refusal"] = None
    except ValueError as exc:
        out["refusal"] = str(exc)
    return out


def _rel(a, b):
    return ((a - b).abs().amax(-1) / b.abs().amax(-1)).max().item()


@pytest.fixture(scope="module")
def runs(sharded, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharded")
    ckpt = str(tmp / "dcp")
    plan = {}
    for dtype in ("float32", "float64"):
        cfg = {**BASE, "dtype": dtype}
        plan[f"zero-{dtype}"] = ("zero", cfg)
        plan[f"zero-{dtype}-torch"] = ("zero", {**cfg, "torch_class": "Adam"})
        extra = dict(save_at=SAVE_AT, checkpoint=ckpt) if dtype == "float64" else {}
        plan[f"fsdp-{dtype}"] = ("fsdp", {**cfg, **extra})
        plan[f"fsdp-{dtype}-torch"] = ("fsdp", {**cfg, "torch_class": "Adam"})
    plan["fsdp-resumed"] = ("fsdp", {**BASE, "dtype": "float64", "save_at": SAVE_AT, "resume_from": ckpt})
    plan["dtensor"] = (dtensor_checks, {**BASE, "dtype": "float64"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = sharded.spawn(2, plan, tmp)
    finally:
        torch.set_num_threads(threads)
    data = sharded.load_digits(torch.float64)
    return results, data, ckpt


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_zero_redundancy_optimizer_equals_unsharded(sharded, runs, dtype):
    results, data, _ = runs
    data = tuple(t.to(getattr(torch, dtype)) if t.is_floating_point() else t for t in data)
    ours, theirs = results[f"zero-{dtype}"], results[f"zero-{dtype}-torch"]
    assert ours["owned"] > 0                                  # rank 0 stepped a partition of its own
    single, single_opt = sharded.train_single({**BASE, "dtype": dtype}, data)
    assert _rel(ours["trajectory"], single) <= RTOL[dtype]
    assert _rel(ours["trajectory"], theirs["trajectory"]) <= RTOL[dtype]
    # the consolidated state dict (every rank's partition) loads into one process's optimizer
    sd = ours["state_dict"]
    assert sorted(sd["state"]) == list(range(4))
    model = sharded.make_model(getattr(torch, dtype))
    from symopt.torch import Optimizer
    opt = Optimizer("adam", model.parameters(), lr=BASE["lr"], **BASE["hyper"])
    opt.load_state_dict(sd)
    for p, q in zip(opt.param_groups[0]["params"], single_opt.param_groups[0]["params"]):
        for key in ("exp_avg", "exp_avg_sq"):
            assert _rel(opt.state[p][key].reshape(1, -1), single_opt.state[q][key].reshape(1, -1)) <= RTOL[dtype]
        assert opt.state[p]["step"].item() == BASE["steps"]
    reference = torch.optim.Adam(sharded.make_model(getattr(torch, dtype)).parameters())
    reference.load_state_dict(sd)                             # and into torch.optim's
    assert reference.param_groups[0]["lr"] == BASE["lr"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fsdp2_steps_local_shards_like_unsharded(sharded, runs, dtype):
    results, data, _ = runs
    data = tuple(t.to(getattr(torch, dtype)) if t.is_floating_point() else t for t in data)
    ours, theirs = results[f"fsdp-{dtype}"], results[f"fsdp-{dtype}-torch"]
    assert ours["state_is_sharded"]                           # DTensor state, placed as the params
    single, _ = sharded.train_single({**BASE, "dtype": dtype}, data)
    assert _rel(ours["trajectory"], single) <= RTOL[dtype]
    assert _rel(ours["trajectory"], theirs["trajectory"]) <= RTOL[dtype]


def test_dtensor_params_directly(runs):
    """distribute_tensor params: Shard(0) stepped through local shards equals torch.optim.Adam on the full
    tensors; Replicate() params take rules with reductions (lamb equals lamb on plain tensors); lamb over
    Shard(0) params is refused, naming the reason."""
    got = runs[0]["dtensor"]
    assert got["adam"] <= RTOL["float64"] and got["lamb"] <= RTOL["float64"]
    message = got["refusal"]
    assert message is not None and "sharded DTensors" in message and "'lamb'" in message


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # the 1-rank resume, by design
def test_dcp_checkpoint_resumes_on_the_same_and_another_number_of_ranks(sharded, runs):
    results, data, ckpt = runs
    full = results["fsdp-float64"]["trajectory"]
    resumed = results["fsdp-resumed"]["trajectory"]           # 2 ranks, fresh model and optimizer
    assert resumed.shape[0] == BASE["steps"] - SAVE_AT
    assert _rel(resumed, full[SAVE_AT:]) <= RTOL["float64"]
    alone = sharded.resume_single({**BASE, "dtype": "float64", "save_at": SAVE_AT}, data, ckpt)   # 1 rank
    assert _rel(alone, full[SAVE_AT:]) <= RTOL["float64"]
    # not trivially equal: resuming from the initial params instead would differ
    assert _rel(full[SAVE_AT:], sharded.train_single({**BASE, "dtype": "float64",
                                                      "steps": BASE["steps"] - SAVE_AT}, data)[0]) > 1e-3
