"""symopt.torch.Optimizer behaves as a torch.optim.Optimizer.

References: torch.optim's own classes on the same problem (float64, relative error
<= 1e-9 over the steps shown), the symopt runtime on NumPy arrays (bit for bit: the
same kernel), and hand-written formulas for user rules (float64, 1e-12).
"""
import copy
import subprocess
import sys

import numpy as np
import pytest
from conftest import rel_err

torch = pytest.importorskip("torch")

import symopt  # noqa: E402
from symopt import NonFiniteGradientError  # noqa: E402
from symopt.torch import Optimizer  # noqa: E402

RTOL_F64 = 1e-9


@pytest.fixture(autouse=True)
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(dtype)


def _data(dtype=torch.float64, n=24):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g, dtype=dtype), torch.randn(n, 3, generator=g, dtype=dtype)


def _loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


def _train(model, opt, steps, x, y, scheduler=None):
    for _ in range(steps):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def _assert_same_params(ma, mb, tol=RTOL_F64):
    for (name, a), b in zip(ma.named_parameters(), mb.parameters()):
        e = rel_err(a, b, floor=1.0)
        assert e <= tol, f"{name}: relative error {e:.3g}"


def test_import_symopt_does_not_import_torch():
    code = "import sys, symopt; symopt.optimizer('notes.gd', [__import__('numpy').zeros(2)]); " \
           "assert 'torch' not in sys.modules, 'symopt imported torch'; " \
           "assert symopt.torch.Optimizer.__module__ == 'symopt.torch.optimizer'"   # on first use only
    subprocess.run([sys.executable, "-c", code], check=True)


def test_is_a_torch_optimizer_stepping_in_place_like_torch_adam():
    x, y = _data()
    ma, mb = _mlp(), _mlp()
    ptrs = [p.data_ptr() for p in mb.parameters()]
    ta = torch.optim.Adam(ma.parameters(), lr=1e-2, weight_decay=1e-3)
    sb = Optimizer("adam", mb.parameters(), lr=1e-2, weight_decay=1e-3)
    assert isinstance(sb, torch.optim.Optimizer)
    _train(ma, ta, 30, x, y)
    _train(mb, sb, 30, x, y)
    assert [p.data_ptr() for p in mb.parameters()] == ptrs            # in place, zero copy
    _assert_same_params(mb, ma)
    for pa, pb in zip(ma.parameters(), mb.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert rel_err(sb.state[pb][key], ta.state[pa][key], floor=1.0) <= RTOL_F64
        assert int(sb.state[pb]["step"]) == 30 == int(ta.state[pa]["step"])
    assert "adam" in repr(sb)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_kernel_as_the_numpy_runtime(dtype):
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((4, 3)).astype(dtype), rng.standard_normal(7).astype(dtype)]
    tensors = [torch.tensor(a, dtype=tdtype, requires_grad=True) for a in arrays]
    core = symopt.optimizer("notes.adam", arrays, lr=0.01)
    opt = Optimizer("notes.adam", tensors, lr=0.01)
    for _ in range(5):
        grads = [rng.standard_normal(a.shape).astype(dtype) for a in arrays]
        core.step(grads)
        for p, g in zip(tensors, grads):
            p.grad = torch.from_numpy(g.copy())
        opt.step()
    for a, p in zip(arrays, tensors):
        assert p.dtype == tdtype
        np.testing.assert_array_equal(p.detach().numpy(), a)


def test_user_rule():
    import sympy as sp

    p_, g_, m_ = sp.symbols("p g m")
    lr_, beta_ = sp.symbols("lr beta")
    rule = symopt.Rule("heavy_ball_torch", param=p_, grad=g_, state={m_: 0}, hyper={lr_: 1e-2, beta_: 0.9},
                       updates=[(m_, beta_ * m_ + g_), (p_, p_ - lr_ * m_)])
    w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    opt = Optimizer(rule, [w], lr=0.1, beta=0.5)
    ref, m = w.detach().clone(), torch.zeros(3)
    for k in range(4):
        g = torch.tensor([0.5, -1.0, 2.0]) * (k + 1)
        w.grad = g.clone()
        opt.step()
        m = 0.5 * m + g
        ref = ref - 0.1 * m
    assert rel_err(w, ref, floor=1.0) <= 1e-12
    assert torch.equal(opt.state[w]["m"], m)


def test_param_groups_closure_and_params_without_grad_match_torch():
    x, y = _data()
    ma, mb = _mlp(), _mlp()

    def groups(m):
        return [{"params": [m[0].weight, m[0].bias], "lr": 0.05},
                {"params": [m[2].weight, m[2].bias], "weight_decay": 0.1}]

    ta = torch.optim.RMSprop(groups(ma), lr=1e-2, momentum=0.5)
    sb = Optimizer("rmsprop", groups(mb), lr=1e-2, momentum=0.5)
    assert sb.param_groups[0]["lr"] == 0.05 and sb.param_groups[1]["lr"] == 1e-2
    for step in range(12):
        for m, o in ((ma, ta), (mb, sb)):
            def closure(m=m, o=o):
                o.zero_grad()
                loss = _loss(m, x, y)
                loss.backward()
                if step % 3 == 0:
                    m[2].bias.grad = None                 # no gradient: skipped, step not advanced
                return loss
            loss = o.step(closure)
            assert torch.is_tensor(loss) and loss.ndim == 0
    _assert_same_params(mb, ma)
    assert int(sb.state[mb[2].bias]["step"]) == int(ta.state[ma[2].bias]["step"]) == 8
    assert int(sb.state[mb[0].bias]["step"]) == 12


def test_frozen_params_are_left_alone():
    x, y = _data()
    m = _mlp()
    m[0].weight.requires_grad_(False)
    frozen = m[0].weight.detach().clone()
    opt = Optimizer("adam", m.parameters(), lr=0.1)
    _train(m, opt, 3, x, y)
    assert torch.equal(m[0].weight, frozen)
    assert int(opt.state[m[0].weight]["step"]) == 0
    assert 0 not in opt.state_dict()["state"] and 1 in opt.state_dict()["state"]


def test_lr_scheduler_changes_lr_without_recompiling():
    x, y = _data()
    ma, mb = _mlp(), _mlp()
    ta = torch.optim.Adam(ma.parameters(), lr=0.05)
    sb = Optimizer("adam", mb.parameters(), lr=0.05)
    la = torch.optim.lr_scheduler.StepLR(ta, step_size=3, gamma=0.5)
    lb = torch.optim.lr_scheduler.StepLR(sb, step_size=3, gamma=0.5)
    _train(ma, ta, 2, x, y, la)
    _train(mb, sb, 2, x, y, lb)
    kernel = sb.runtime._kernel_serial
    compiled = len(kernel.signatures)
    _train(ma, ta, 10, x, y, la)
    _train(mb, sb, 10, x, y, lb)
    assert sb.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**4)
    assert len(kernel.signatures) == compiled
    _assert_same_params(mb, ma)
    # a scheduler's tensor learning rate and a user's direct change are seen too
    lr_t = torch.tensor(0.01)
    sb.param_groups[0]["lr"] = lr_t
    ta.param_groups[0]["lr"] = 0.01
    _train(ma, ta, 2, x, y)
    _train(mb, sb, 2, x, y)
    lr_t.fill_(0.002)                                  # changed in place: still seen
    ta.param_groups[0]["lr"] = 0.002
    _train(ma, ta, 2, x, y)
    _train(mb, sb, 2, x, y)
    _assert_same_params(mb, ma)


def test_maximize_where_the_rule_has_it():
    x, y = _data()
    ma, mb = _mlp(), _mlp()
    ta = torch.optim.SGD(ma.parameters(), lr=1e-2, momentum=0.9, maximize=True)
    sb = Optimizer("sgd", mb.parameters(), lr=1e-2, momentum=0.9, maximize=True)
    _train(ma, ta, 10, x, y)
    _train(mb, sb, 10, x, y)
    _assert_same_params(mb, ma)
    with pytest.raises(TypeError, match="maximize"):
        Optimizer("notes.adam", _mlp().parameters(), maximize=True)


def test_step_hooks_and_profiler_label():
    calls = []
    m = _mlp()
    opt = Optimizer("adam", m.parameters(), lr=1e-2)
    h1 = opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", o is opt)))
    h2 = opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", o is opt)))
    x, y = _data()
    _train(m, opt, 1, x, y)
    assert calls == [("pre", True), ("post", True)]
    h1.remove(), h2.remove()
    from torch.optim.optimizer import register_optimizer_step_post_hook
    h3 = register_optimizer_step_post_hook(lambda o, a, k: calls.append("global"))
    try:
        _train(m, opt, 1, x, y)
    finally:
        h3.remove()
    assert calls[-1] == "global"
    with torch.autograd.profiler.profile() as prof:
        _train(m, opt, 1, x, y)
    assert any(e.name == "Optimizer.step#Optimizer.step" for e in prof.function_events)


def test_zero_grad_and_nonfinite_gradients():
    x, y = _data()
    m = _mlp()
    opt = Optimizer("adam", m.parameters(), lr=1e-2)
    _train(m, opt, 2, x, y)
    opt.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    before = [p.detach().clone() for p in m.parameters()]
    opt.step()                                          # no gradients: nothing happens
    _loss(m, x, y).backward()
    m[2].bias.grad[1] = float("nan")
    with pytest.raises(NonFiniteGradientError):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert all(int(opt.state[p]["step"]) == 2 for p in m.parameters())
    skip = Optimizer("adam", m.parameters(), lr=1e-2, on_nonfinite="skip")
    skip.step()
    assert skip.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_version_counter_advances_so_autograd_sees_the_in_place_update():
    x, y = _data()
    m = _mlp()
    opt = Optimizer("notes.sgd", m.parameters(), lr=1e-2)
    loss = _loss(m, x, y)
    loss.backward(retain_graph=True)
    v0 = m[0].weight._version
    opt.step()
    assert m[0].weight._version > v0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()                                 # the graph saw the old weights


def test_replaced_param_storage_and_add_param_group_keep_state_like_torch():
    x, y = _data()
    ma, mb = _mlp(), _mlp()
    head_a, head_b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    head_b.load_state_dict(head_a.state_dict())
    ta = torch.optim.Adam(ma.parameters(), lr=1e-2)
    sb = Optimizer("adam", mb.parameters(), lr=1e-2)
    _train(ma, ta, 3, x, y)
    _train(mb, sb, 3, x, y)
    ta.add_param_group({"params": head_a.parameters(), "lr": 0.02})
    sb.add_param_group({"params": head_b.parameters(), "lr": 0.02})
    mb[0].weight.data = mb[0].weight.data.clone()      # new storage: the optimizer follows it

    def run(m, head, o):
        for _ in range(5):
            o.zero_grad()
            ((head(m(x)) - y) ** 2).mean().backward()
            o.step()
    run(ma, head_a, ta)
    run(mb, head_b, sb)
    _assert_same_params(mb, ma)
    _assert_same_params(head_b, head_a)
    assert int(sb.state[mb[0].weight]["step"]) == 8 and int(sb.state[head_b.weight]["step"]) == 5


def test_deepcopy_and_named_parameters():
    x, y = _data()
    m = _mlp()
    opt = Optimizer("nadam", m.named_parameters(), lr=1e-2)
    assert opt.param_groups[0]["param_names"][0] == "0.weight"
    _train(m, opt, 3, x, y)
    m2, opt2 = copy.deepcopy((m, opt))
    _train(m, opt, 4, x, y)
    _train(m2, opt2, 4, x, y)
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), m2.parameters()))
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(m.parameters(), m2.parameters()))
    assert "param_names" in opt.state_dict()["param_groups"][0]


def test_non_contiguous_gradient_is_read_correctly():
    w1 = torch.ones(3, 4, requires_grad=True)
    w2 = torch.ones(3, 4, requires_grad=True)
    o1, o2 = Optimizer("notes.gd", [w1], lr=0.1), Optimizer("notes.gd", [w2], lr=0.1)
    g = torch.arange(12.0).reshape(4, 3).t()
    assert not g.is_contiguous()
    w1.grad, w2.grad = g, g.contiguous()
    o1.step(), o2.step()
    assert torch.equal(w1, w2)


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_tensors_it_cannot_step_are_refused_clearly():
    """The Numba kernels refuse what they cannot step (``backend="auto"`` hands those tensors to the
    torch backend instead: tests/test_backends.py)."""
    ok = torch.zeros(3, requires_grad=True)
    with pytest.raises(TypeError, match="meta"):
        Optimizer("adam", [torch.zeros(3, device="meta", requires_grad=True)], backend="numba")
    with pytest.raises(TypeError, match="sparse"):
        Optimizer("adam", [torch.sparse_coo_tensor([[0]], [1.0], (3,)).requires_grad_(True)])
    for dt in (torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match=str(dt).split(".")[1]):
            Optimizer("adam", [torch.zeros(3, dtype=dt, requires_grad=True)], backend="numba")
    with pytest.raises(ValueError, match="not dense"):
        Optimizer("adam", [torch.zeros(4, 6)[:, ::2].requires_grad_(True)], backend="numba")
    with pytest.raises(TypeError, match="one dtype"):
        Optimizer("adam", [ok, torch.zeros(2, dtype=torch.float32, requires_grad=True)], backend="numba")
    with pytest.raises(TypeError, match="'lrr'"):
        Optimizer("adam", [ok], lrr=0.1)
    with pytest.raises(TypeError, match="'gamma'"):
        Optimizer("adam", [{"params": [ok], "gamma": 0.1}])
    with pytest.raises(ValueError, match="lr"):
        Optimizer("adam", [ok], lr=-1.0)
    with pytest.raises(ValueError, match="differentiable"):
        Optimizer("adam", [ok], differentiable=True)
    Optimizer("adam", [ok], foreach=True, fused=False)  # implementation switches are accepted
    opt = Optimizer("adam", [ok])
    ok.grad = torch.sparse_coo_tensor([[0]], [1.0], (3,))
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    opt.param_groups[0]["amsgrad"] = True               # a structural option: another kernel
    ok.grad = torch.ones(3)
    with pytest.raises(ValueError, match="variant"):
        opt.step()


def test_a_param_resized_in_place_is_caught_before_the_kernel_reads_it():
    p = torch.nn.Parameter(torch.ones(6))
    opt = Optimizer("adam", [p], lr=0.1)
    p.grad = torch.ones(6)
    opt.step()
    p.data = p.data[:3]                                 # same address, fewer elements
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="shape"):
        opt.step()
