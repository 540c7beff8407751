"""A PyTorch training loop changes one line and trains as well as with torch.optim.

The digits MLP (64 -> 32 -> 10, ReLU, cross-entropy; scikit-learn's bundled 8x8
digits, no download) trains for 15 epochs of minibatches of 64 in float32, from the
same initial weights and batch order, once with ``torch.optim.<Class>`` and once
with ``symopt.torch.Optimizer(<rule>)``, for every torch-compatible rule.  Bounds:
held-out accuracy >= 0.92 for both and equal to within 0.01 (4 of 397 test
images); the final weights agree to 1e-4 relative (measured: <= 2e-6; float32
rounding differs between torch's and symopt's operation order over 330 steps).
"""
import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("sklearn.datasets")

from symopt.torch import Optimizer  # noqa: E402

EPOCHS, BATCH = 15, 64
MIN_ACCURACY, MAX_GAP, WEIGHT_RTOL = 0.92, 0.01, 1e-4

#: rule -> (torch.optim class, keyword arguments used by both)
RULES = {
    "sgd": ("SGD", dict(lr=0.1, momentum=0.9)),
    "adam": ("Adam", dict(lr=3e-3)),
    "adamw": ("AdamW", dict(lr=3e-3, weight_decay=1e-2)),
    "adagrad": ("Adagrad", dict(lr=0.05)),
    "rmsprop": ("RMSprop", dict(lr=2e-3)),
    "adamax": ("Adamax", dict(lr=5e-3)),
    "nadam": ("NAdam", dict(lr=3e-3)),
    "radam": ("RAdam", dict(lr=1e-2)),
    "adadelta": ("Adadelta", dict(lr=1.0)),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A model this small gains nothing from intra-op threads, and they stall on a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits():
    x, y = datasets.load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x, y, perm[:1400], perm[1400:]


def _train(make_optimizer, digits):
    x, y, train, test = digits
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = make_optimizer(model.parameters())
    g = torch.Generator().manual_seed(1)
    for _ in range(EPOCHS):
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order), BATCH):
            b = order[i:i + BATCH]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).double().mean().item()
    return accuracy, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("rule", list(RULES))
def test_digits_mlp_trains_as_with_torch_optim(rule, digits):
    cls, kw = RULES[rule]
    acc_torch, w_torch = _train(lambda p: getattr(torch.optim, cls)(p, **kw), digits)
    acc_symopt, w_symopt = _train(lambda p: Optimizer(rule, p, **kw), digits)   # the one changed line
    assert acc_torch >= MIN_ACCURACY, f"torch.optim.{cls}: accuracy {acc_torch:.3f}"
    assert acc_symopt >= MIN_ACCURACY, f"symopt {rule}: accuracy {acc_symopt:.3f}"
    assert abs(acc_symopt - acc_torch) <= MAX_GAP, (acc_symopt, acc_torch)
    for a, b in zip(w_symopt, w_torch):
        err = float((a - b).abs().max() / b.abs().max())
        assert err <= WEIGHT_RTOL, f"{rule}: final weights differ by {err:.3g} (relative)"
