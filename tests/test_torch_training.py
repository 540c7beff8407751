"""symopt.torch.Optimizer in the code of real training scripts.

A tensor lr (from the constructor, changed in place), torch.compile of ``opt.step``
and of a whole training step, params in any dense layout (``channels_last`` conv
weights, transposed matrices, grads in another layout), schedule-free ``train()``/
``eval()``, torch's implementation switches in checkpoints.

References: torch.optim's classes and schedulefree 1.4.1's (``foreach=False``) on the
same tensors and gradients; relative error (max-norm) <= 1e-12 in float64 and <= 1e-5
in float32 after every step shown.
"""
import warnings

import pytest
from conftest import rel_err

torch = pytest.importorskip("torch")

from symopt.torch import Optimizer

RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}
DTYPES = (torch.float32, torch.float64)
TORCH_CLASS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "nadam": "NAdam"}
KW = {"sgd": dict(lr=0.1, momentum=0.9), "adam": dict(lr=1e-2), "adamw": dict(lr=1e-2, weight_decay=0.1),
      "rmsprop": dict(lr=1e-2, momentum=0.5), "nadam": dict(lr=1e-2)}


@pytest.fixture(autouse=True)
def float64_default():
    """torch keeps scalar state (step, NAdam's mu_product) in the default dtype: float64 for the references."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _pair(rule, tensors, **kw):
    """(symopt's optimizer, torch.optim's) over two independent copies of ``tensors``."""
    ours = [t.detach().clone(memory_format=torch.preserve_format).requires_grad_() for t in tensors]
    theirs = [t.detach().clone(memory_format=torch.preserve_format).requires_grad_() for t in tensors]
    ref = getattr(torch.optim, TORCH_CLASS[rule])(theirs, foreach=False, **{**KW[rule], **kw})
    return Optimizer(rule, ours, **{**KW[rule], **kw}), ours, ref, theirs


def _give(params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone(memory_format=torch.preserve_format)


# ----------------------------------------------------------------- 1. tensor lr
@pytest.mark.parametrize("rule", ["sgd", "adam", "adamw", "nadam"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_tensor_lr_from_the_constructor_is_kept_and_changed_in_place(rule, dtype):
    torch.manual_seed(0)
    lr_ours, lr_theirs = (torch.tensor(KW[rule]["lr"], dtype=dtype) for _ in range(2))   # torch computes in its dtype
    opt, ps, ref, rs = _pair(rule, [torch.randn(4, 3, dtype=dtype), torch.randn(5, dtype=dtype)], lr=lr_ours)
    ref.param_groups[0]["lr"] = lr_theirs
    assert opt.param_groups[0]["lr"] is lr_ours         # the caller's tensor, as torch.optim keeps it
    for step in range(8):
        grads = [torch.randn_like(p) for p in ps]
        _give(ps, grads), _give(rs, grads)
        opt.step(), ref.step()
        for p, r in zip(ps, rs):
            assert rel_err(p, r, floor=1) <= RTOL[dtype], (rule, step)
        lr_ours.mul_(0.7), lr_theirs.mul_(0.7)           # the caller's handle
        opt.param_groups[0]["lr"].add_(1e-3), ref.param_groups[0]["lr"].add_(1e-3)  # the group's
    assert lr_ours.item() == lr_theirs.item() and lr_ours.item() != KW[rule]["lr"]


# ------------------------------------------------------------ 2. torch.compile
def _compile_counters():
    from torch._dynamo.utils import counters
    counters.clear()
    return counters


def test_compiled_step_runs_the_kernel_and_never_recompiles_on_lr_changes():
    """torch.compile(opt.step): one frame, the step itself skipped by Dynamo, no recompile while the lr
    changes at every step (error_on_recompile turns a recompile into an error); equal to the eager step."""
    import torch._dynamo
    torch._dynamo.reset()
    counters = _compile_counters()
    torch.manual_seed(0)
    opt, ps, ref, rs = _pair("adam", [torch.randn(6, 5, dtype=torch.float64)])
    step = torch.compile(opt.step, backend="eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(6):
            opt.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = 1e-2 * (i + 1)
            grads = [torch.randn_like(ps[0])]
            _give(ps, grads), _give(rs, grads)
            step(), ref.step()
            assert rel_err(ps[0], rs[0], floor=1) <= RTOL[torch.float64]
    assert counters["frames"]["total"] == 1 and not counters["recompiles"]
    assert sum(counters["graph_break"].values()) == 1   # the one break: the symopt step, run eagerly


def test_compiled_training_step_with_opt_step_inside():
    """A training step compiled as a whole (forward, backward, opt.step): equals torch.optim.SGD's eager
    run; the lr changed at every step never recompiles."""
    import torch._dynamo
    torch._dynamo.reset()
    counters = _compile_counters()
    torch.manual_seed(0)
    models = [torch.nn.Linear(4, 3).double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opt = Optimizer("sgd", models[0].parameters(), lr=0.1, momentum=0.9)
    ref = torch.optim.SGD(models[1].parameters(), lr=0.1, momentum=0.9, foreach=False)

    def train_step(model, o, x, y):
        o.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        o.step()
        return loss

    compiled = torch.compile(train_step, backend="eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(5):
            x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
            opt.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = 0.1 / (i + 1)
            compiled(models[0], opt, x, y)
            train_step(models[1], ref, x, y)
            for p, r in zip(models[0].parameters(), models[1].parameters()):
                assert rel_err(p, r, floor=1) <= RTOL[torch.float64], i
    assert not counters["recompiles"]


# ------------------------------------------------------- 3. dense layouts
def _dense_layouts(dtype):
    g = torch.Generator().manual_seed(3)
    conv = torch.randn(4, 3, 3, 3, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
    conv3d = torch.randn(2, 3, 2, 2, 2, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
    transposed = torch.randn(5, 3, generator=g, dtype=dtype).t()
    permuted = torch.randn(2, 3, 4, generator=g, dtype=dtype).permute(2, 0, 1)
    column = torch.randn(1, 6, generator=g, dtype=dtype).t()       # size-1 dimension, odd strides
    return [conv, conv3d, transposed, permuted, column, torch.randn(3, generator=g, dtype=dtype)]


@pytest.mark.parametrize("rule", sorted(TORCH_CLASS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_params_in_any_dense_layout_step_in_place_like_torch(rule, dtype):
    """channels_last/3d, transposed and permuted params: stepped in place (same memory, same strides),
    equal to torch.optim; their state has their layout; gradients come in the param's layout, contiguous
    (another layout: read as the same elements) and channels_last."""
    tensors = _dense_layouts(dtype)
    assert not any(t.is_contiguous() for t in tensors[:4])
    opt, ps, ref, rs = _pair(rule, tensors)
    where = [(p.data_ptr(), p.stride()) for p in ps]
    g = torch.Generator().manual_seed(4)
    for step in range(6):
        grads = [torch.randn(p.shape, generator=g, dtype=dtype) for p in ps]      # contiguous
        if step % 2:
            grads = [torch.empty_like(p).copy_(x) for p, x in zip(ps, grads)]    # the param's layout
        for p, r, x in zip(ps, rs, grads):
            p.grad, r.grad = x.clone(), x.clone()
        opt.step(), ref.step()
        for p, r in zip(ps, rs):
            assert rel_err(p, r, floor=1) <= RTOL[dtype], (rule, step, p.stride())
    assert [(p.data_ptr(), p.stride()) for p in ps] == where
    for p, r in zip(ps, rs):
        for key, value in ref.state[r].items():
            if key != "step" and value.dim():
                assert opt.state[p][key].stride() == p.stride(), key
                assert rel_err(opt.state[p][key], value, floor=1) <= RTOL[dtype], key


@pytest.mark.parametrize("rule", ["adam", "sgd"])
def test_checkpoints_of_dense_layouts_move_both_ways(rule):
    """state_dict() keeps each param's layout in its state (as torch.optim's); loading a torch.optim
    checkpoint (channels_last state, or contiguous state) continues equal to torch.optim."""
    opt, ps, ref, rs = _pair(rule, _dense_layouts(torch.float64))
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in ps]
        _give(ps, grads), _give(rs, grads)
        opt.step(), ref.step()
    sd = opt.state_dict()
    for j, p in enumerate(ps):
        for key, value in sd["state"][j].items():
            if value.dim():
                assert value.stride() == p.stride(), key
    resumed = getattr(torch.optim, TORCH_CLASS[rule])([r.detach().clone(memory_format=torch.preserve_format)
                                                       .requires_grad_() for r in rs], **KW[rule])
    resumed.load_state_dict(sd)
    contiguous = ref.state_dict()
    contiguous["state"] = {j: {k: v.contiguous() for k, v in e.items()} for j, e in contiguous["state"].items()}
    again = Optimizer(rule, [p.detach().clone(memory_format=torch.preserve_format).requires_grad_() for p in ps],
                      **KW[rule])
    again.load_state_dict(contiguous)
    runs = [(opt, ps), (resumed, resumed.param_groups[0]["params"]), (again, again.param_groups[0]["params"])]
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in ps]
        _give(rs, grads), ref.step()
        for o, params in runs:
            _give(params, grads), o.step()
            for p, r in zip(params, rs):
                assert rel_err(p, r, floor=1) <= RTOL[torch.float64]


def test_params_that_are_not_dense_go_to_the_torch_backend_or_are_refused_clearly():
    strided = torch.zeros(4, 6, dtype=torch.float64)[:, ::2].requires_grad_()
    with pytest.raises(ValueError, match="not dense"):
        Optimizer("adam", [strided], backend="numba")
    # backend="auto" steps it with the torch backend, as torch.optim.Adam does
    ref = torch.zeros(4, 6, dtype=torch.float64)[:, ::2].requires_grad_()
    opt, peer = Optimizer("adam", [strided], lr=0.1), torch.optim.Adam([ref], lr=0.1)
    for k in range(3):
        strided.grad = torch.full((4, 3), 1.0 + k, dtype=torch.float64)
        ref.grad = strided.grad.clone()
        opt.step()
        peer.step()
    assert rel_err(strided, ref) <= 1e-12 and strided.stride() == (6, 2)
    p = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    opt = Optimizer("adam", [p])
    p.data = torch.zeros(3, 8, dtype=torch.float64)[:, ::2].t()       # replaced by a view with gaps
    p.grad = torch.ones(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="not dense"):
        opt.step()


def test_replacing_a_param_by_another_layout_keeps_its_state():
    """p.data = p.data.contiguous(memory_format=channels_last) mid-training: the state follows."""
    opt, ps, ref, rs = _pair("adam", [torch.randn(2, 3, 2, 2, dtype=torch.float64)])
    for step in range(4):
        if step == 2:
            ps[0].data = ps[0].data.contiguous(memory_format=torch.channels_last)
        grads = [torch.randn_like(rs[0])]
        _give(ps, grads), _give(rs, grads)
        opt.step(), ref.step()
        assert rel_err(ps[0], rs[0], floor=1) <= RTOL[torch.float64], step
    assert opt.state[ps[0]]["exp_avg"].stride() == ps[0].stride() != rs[0].stride()


# ---------------------------------------------------------- 4. schedule-free
SF_CASES = [("sgd_schedulefree", "SGDScheduleFree", dict(lr=0.1, momentum=0.5, weight_decay=0.1)),
            ("adamw_schedulefree", "AdamWScheduleFree", dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1))]


@pytest.mark.parametrize("rule,cls,kw", SF_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_schedule_free_train_and_eval_equal_schedulefree(rule, cls, kw, dtype):
    """train()/eval() as schedulefree's: after each phase of training, the eval-mode params (the averaged
    point x) and the state z equal schedulefree's; training resumes from y after train()."""
    schedulefree = pytest.importorskip("schedulefree")
    torch.manual_seed(0)
    init = [torch.randn(3, 4, dtype=dtype), torch.randn(5, dtype=dtype)]
    ps = [t.clone().requires_grad_() for t in init]
    rs = [t.clone().requires_grad_() for t in init]
    opt = Optimizer(rule, ps, **kw)
    ref = getattr(schedulefree, cls)(rs, foreach=False, **kw)
    opt.eval(), ref.eval()                       # before any step: nothing moves (no z yet)
    assert all(torch.equal(p, t) for p, t in zip(ps, init))
    for phase in range(3):
        opt.train(), ref.train()
        assert opt.param_groups[0]["train_mode"] is True
        for _ in range(4):
            grads = [torch.randn_like(p) for p in ps]
            _give(ps, grads), _give(rs, grads)
            opt.step(), ref.step()
        for p, r in zip(ps, rs):                 # y, where the gradients were taken
            assert rel_err(p, r, floor=1) <= RTOL[dtype]
        opt.eval(), ref.eval()
        opt.eval()                               # a second eval() changes nothing
        for p, r in zip(ps, rs):                 # x, the averaged point
            assert rel_err(p, r, floor=1) <= RTOL[dtype], phase
            assert rel_err(opt.state[p]["z"], ref.state[r]["z"], floor=1) <= RTOL[dtype]
        with pytest.raises(RuntimeError, match="eval mode"):
            opt.step()
    assert opt.state_dict()["param_groups"][0]["train_mode"] is False


def test_schedule_free_warns_when_the_lr_is_scheduled():
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = Optimizer("adamw_schedulefree", [p], lr=1e-2)
    p.grad = torch.ones(3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(), opt.step()                   # constant lr: silent
    torch.optim.lr_scheduler.StepLR(opt, step_size=10)   # attached, lr not changed yet
    with pytest.warns(UserWarning, match="assumes a constant lr.*scheduler is attached"):
        opt.step()
    other = Optimizer("sgd_schedulefree", [torch.zeros(2, dtype=torch.float64, requires_grad=True)])
    other.param_groups[0]["params"][0].grad = torch.ones(2, dtype=torch.float64)
    other.step()
    other.param_groups[0]["lr"] = 0.5
    with pytest.warns(UserWarning, match="lr changed from"):
        other.step()
    adam = Optimizer("adam", [torch.zeros(2, dtype=torch.float64, requires_grad=True)])
    adam.train(), adam.eval()                    # rules without an averaged point: nothing to do
    torch.optim.lr_scheduler.StepLR(adam, step_size=10)
    adam.param_groups[0]["params"][0].grad = torch.ones(2, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adam.step()


# ------------------------------------------------------ 5. implementation flags
@pytest.mark.parametrize("flags", [dict(fused=True), dict(foreach=True), dict(foreach=False, fused=False)])
def test_implementation_flags_ride_through_checkpoints_both_ways(flags):
    """symopt(fused=True).state_dict() -> AdamW keeps fused=True; AdamW(fused=True).state_dict() -> symopt
    -> its state_dict() -> AdamW keeps it too."""
    def params():
        return [torch.zeros(3, requires_grad=True)]

    ours = Optimizer("adamw", params(), lr=1e-2, **flags)
    theirs = torch.optim.AdamW(params(), lr=1e-2)
    theirs.load_state_dict(ours.state_dict())
    assert {k: theirs.param_groups[0][k] for k in flags} == flags
    source = torch.optim.AdamW(params(), lr=1e-2, **flags)
    back = Optimizer("adamw", params(), lr=1e-2)
    back.load_state_dict(source.state_dict())
    sink = torch.optim.AdamW(params(), lr=1e-2)
    sink.load_state_dict(back.state_dict())
    assert {k: sink.param_groups[0][k] for k in flags} == flags
    assert {k: back.param_groups[0][k] for k in flags} == flags


def test_params_first_with_a_rule_keyword():
    """Optimizer(params, rule=...): the call torch's wrappers make (optimizer_class(params, **defaults))."""
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = Optimizer([p], rule="adam", lr=0.5)
    assert opt.rule_name == "adam" and opt.param_groups[0]["lr"] == 0.5
    with pytest.raises(TypeError, match="needs a rule"):
        Optimizer([p], lr=0.5)

