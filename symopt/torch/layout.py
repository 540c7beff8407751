"""Dense strided tensors as the flat runs of memory the kernels step.

A tensor is *dense* when its ``numel`` elements fill ``numel`` consecutive slots
with no gap and no overlap: sorted from the outermost dimension to the innermost
(by decreasing stride), each dimension's stride is the product of the sizes inside
it (a dimension of size 1 may have any stride).  C-contiguous, ``channels_last``,
``channels_last_3d`` and transposed matrices are all dense.  Such a param is
stepped in place through one flat view of its memory, in memory order; its state
is kept in the same order, so that viewed with the param's shape and strides it has
the param's layout (as torch.optim's ``zeros_like(p, memory_format=preserve_format)``).

A ``DTensor`` param (FSDP2's ``fully_shard``, ``distribute_tensor``) is stepped
through its local shard (``to_local()``, the same memory): an elementwise update of
each shard is the update of the whole tensor, with no communication; its state is
kept as DTensors with the param's mesh and placements.

A contiguous param is handed to the runtime as its own shaped view (``order`` None);
any other dense param as the flat view (``order`` the dimensions in memory order).
"""

from __future__ import annotations

import numpy as np
import torch

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch built without distributed
    DTensor = None

__all__ = [
    "core_view",
    "is_dense",
    "is_sharded",
    "like",
    "local",
    "logical",
    "memory_order",
    "same_layout",
    "to_core",
]


def memory_order(t: torch.Tensor):
    """The dimensions of a dense ``t`` from outermost to innermost in memory; None if ``t`` is not dense."""
    shape, stride = tuple(t.shape), t.stride()
    if t.numel() == 0:
        return tuple(range(len(shape)))
    # size-1 dimensions first (their stride is arbitrary), then by decreasing stride
    dims = [d for d in range(len(shape)) if shape[d] == 1]
    dims += sorted((d for d in range(len(shape)) if shape[d] != 1), key=lambda d: -stride[d])
    expected = 1
    for d in reversed(dims):
        if shape[d] == 1:
            continue
        if stride[d] != expected:
            return None
        expected *= shape[d]
    return tuple(dims)


def is_dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill one run of memory without gaps or overlaps."""
    return memory_order(t) is not None


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` (same shape) address every element at the same offset from their start."""
    return all(n == 1 or sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride()))


def core_view(t: torch.Tensor) -> np.ndarray:
    """The NumPy array the runtime steps for a dense ``t``: its shaped view if C-contiguous, else the flat
    view of its memory (both share ``t``'s memory)."""
    t = t.detach()
    if t.is_contiguous():
        return t.numpy()
    return t.as_strided((t.numel(),), (1,)).numpy()


def logical(arr: np.ndarray, shape: tuple, stride: tuple) -> np.ndarray:
    """``arr``, a runtime-layout array of a tensor of ``shape`` and ``stride`` (see :func:`core_view`),
    viewed with that shape and those strides (no copy)."""
    strides = tuple(s * arr.itemsize for s in stride)
    if arr.shape == shape and arr.strides == strides:
        return arr
    return np.lib.stride_tricks.as_strided(arr, shape, strides)


def to_core(arr: np.ndarray, t: torch.Tensor) -> np.ndarray:
    """A new runtime-layout array of ``t`` holding ``arr`` (an array shaped like ``t``, any strides)."""
    if t.is_contiguous():
        return np.ascontiguousarray(arr).reshape(arr.shape)  # a 0-d array stays 0-d
    order = memory_order(t)
    if order is None:
        raise ValueError(f"a tensor of shape {tuple(t.shape)} and strides {t.stride()} is not dense")
    return np.ascontiguousarray(arr.transpose(order)).reshape(-1)


def local(t: torch.Tensor) -> torch.Tensor:
    """The tensor whose memory holds ``t``'s elements on this process: a DTensor's local shard, else ``t``."""
    return t.to_local() if DTensor is not None and isinstance(t, DTensor) else t


def is_sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` is a DTensor of which this process holds only a part (a ``Shard`` or ``Partial`` placement)."""
    return DTensor is not None and isinstance(t, DTensor) and not all(p.is_replicate() for p in t.placements)


def like(value: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``value``, a tensor laid out like ``local(p)``, as a DTensor placed as ``p`` if ``p`` is one (no copy)."""
    if DTensor is None or not isinstance(p, DTensor):
        return value
    return DTensor.from_local(value, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride())
