"""symopt.torch.Optimizer under DistributedDataParallel: 2 processes, gloo, 127.0.0.1 only.

Runs ``examples/ddp_train.py`` (torch.multiprocessing.spawn, a free port on
127.0.0.1, the store's listening socket and gloo bound to the loopback interface):
a digits MLP in float64, global batch 64 split 32/32, 20 steps of symopt's adam.
Checks: every rank's parameters are bit-for-bit equal after every step; the
trajectory equals one process training on the whole global batch with symopt
(relative max-norm difference per step <= 1e-9; only the order of the gradient
sums differs) and with torch.optim.Adam (<= 1e-9).
"""
import pathlib
import sys

import pytest

torch = pytest.importorskip("torch")

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
RTOL_F64 = 1e-9
CFG = dict(rule="adam", lr=1e-2, steps=20, batch=64, dtype="float64", hyper={"weight_decay": 1e-3})


@pytest.fixture(scope="module")
def ddp_train():
    sys.path.insert(0, str(EXAMPLES))        # spawned children inherit sys.path
    try:
        import ddp_train
        yield ddp_train
    finally:
        sys.path.remove(str(EXAMPLES))


def _per_step_rel(a, b):
    return ((a - b).abs().amax(1) / b.abs().amax(1)).max().item()


def test_ddp_two_processes_equal_one_process(ddp_train, tmp_path):
    assert torch.distributed.is_available() and torch.distributed.is_gloo_available()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                              # small model: one thread is fastest, and steady
    try:
        _check(ddp_train, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _check(ddp_train, tmp_path):
    result = ddp_train.spawn(2, CFG, tmp_path)
    traj = result["trajectory"]
    assert traj.shape[0] == CFG["steps"] and traj.dtype == torch.float64
    assert result["max_rank_diff"] == 0.0                 # identical on both ranks after every step
    single = ddp_train.train_single(CFG)
    err = _per_step_rel(traj, single)
    assert err <= RTOL_F64, f"DDP vs one process (symopt): {err:.3g}"
    reference = ddp_train.train_single(CFG, torch_class="Adam")
    err_torch = _per_step_rel(traj, reference)
    assert err_torch <= RTOL_F64, f"DDP vs one process (torch.optim.Adam): {err_torch:.3g}"
    moved = (traj[-1] - ddp_train.flat_params(ddp_train.make_model(torch.float64))).abs().max().item()
    assert moved > 1e-2                                   # it trained
