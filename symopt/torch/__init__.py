"""symopt inside PyTorch: a ``torch.optim.Optimizer`` that steps a generated kernel.

::

    from symopt.torch import Optimizer
    opt = Optimizer("adam", model.parameters(), lr=1e-3)     # or a symopt.Rule
    for x, y in loader:
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()

:class:`Optimizer` steps CPU float32/float64 tensors in place through zero-copy
NumPy views (the Numba kernels), with torch's param groups, closures, hooks and
learning-rate schedulers, and reads and writes ``state_dict()`` in torch.optim's
format, so a checkpoint moves between ``torch.optim.Adam`` and ``Optimizer("adam")``
(see :mod:`symopt.torch.interop` for the format table).  Any other tensors -- CUDA or
any device, bfloat16/float16, ``channels_last`` -- are stepped by the generated torch
code (:mod:`symopt.torch.backend`, ``backend="torch"``, optionally ``compile=True``),
with the same checkpoint format.  Param groups may name their own rule
(``{"params": [...], "rule": "adamw"}``: Muon for matrices, AdamW for the rest; :mod:`symopt.torch.grouped`).

This subpackage is the only part of symopt that imports torch (an optional extra:
``pip install 'symopt[torch]'``, which pins ``torch==2.13.0``); ``import symopt``
never does.
"""

try:
    import torch as _torch  # noqa: F401  (the real PyTorch: absolute import)
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("symopt.torch needs PyTorch: pip install 'symopt[torch]' (pins torch==2.13.0)") from exc

from .backend import TensorOptimizer, choose_backend
from .grouped import GroupedOptimizer
from .interop import TORCH_FORMATS, TorchFormat, torch_format
from .optimizer import Optimizer

__all__ = ["Optimizer", "TensorOptimizer", "GroupedOptimizer", "choose_backend", "TORCH_FORMATS", "TorchFormat", "torch_format"]
