"""Arrays that live back to back in one flat buffer.

A model whose params are views of one buffer, and whose grads are views of a
second buffer with the same layout, is stepped by the optimizer as one segment
per param group instead of one row per tensor (:class:`symopt.Optimizer` detects
the layout itself: nothing to configure)::

    params = symopt.FlatBuffer([(256, 784), (256,), (10, 256), (10,)], np.float32)
    grads = params.like()                    # same shapes, another buffer
    for p in params.arrays: p[...] = init(p.shape)
    opt = symopt.optimizer("adam", params.arrays, lr=1e-3)
    ...                                      # write gradients into grads.arrays
    opt.step(grads.arrays)

``params.flat`` is the whole buffer as a 1-D array (e.g. for a global norm or a
checkpoint in one piece).  The buffer starts on a 64-byte boundary.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["FlatBuffer"]

_ALIGN_BYTES = 64


def _aligned_empty(n: int, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    raw = np.empty(n * dtype.itemsize + _ALIGN_BYTES, dtype=np.uint8)
    start = (-raw.__array_interface__["data"][0]) % _ALIGN_BYTES
    return raw[start:start + n * dtype.itemsize].view(dtype)


class FlatBuffer:
    """Arrays of the given shapes as consecutive views of one C-contiguous buffer.

    ``arrays[k]`` has ``shapes[k]`` and occupies elements ``offsets[k]:offsets[k] + size``
    of ``flat``; there is no padding between them.  Arrays start zeroed.
    """

    def __init__(self, shapes, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise TypeError(f"FlatBuffer holds floating-point arrays, got dtype {self.dtype}")
        norm = []
        for k, shape in enumerate(shapes):
            shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
            if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape):
                raise ValueError(f"shapes[{k}] = {shape!r} is not a shape (non-negative ints)")
            norm.append(tuple(int(d) for d in shape))
        self.shapes = norm
        sizes = [math.prod(s) for s in norm]
        self.offsets = [0]
        for n in sizes[:-1]:
            self.offsets.append(self.offsets[-1] + n)
        total = sum(sizes)
        self.flat = _aligned_empty(total, self.dtype)
        self.flat[...] = 0
        self.arrays = [self.flat[o:o + n].reshape(s) for o, n, s in zip(self.offsets, sizes, norm)]

    @classmethod
    def from_arrays(cls, arrays, dtype=None) -> "FlatBuffer":
        """A buffer holding copies of ``arrays`` (in order); use its ``.arrays`` from then on."""
        arrays = [np.asarray(a) for a in arrays]
        if dtype is None:
            dtypes = {a.dtype for a in arrays}
            if len(dtypes) != 1:
                raise TypeError(f"arrays have several dtypes {sorted(map(str, dtypes))}; pass dtype=")
            dtype = arrays[0].dtype
        buf = cls([a.shape for a in arrays], dtype)
        for dst, src in zip(buf.arrays, arrays):
            dst[...] = src
        return buf

    def like(self) -> "FlatBuffer":
        """A new zeroed buffer with the same shapes and dtype (e.g. for the grads)."""
        return type(self)(self.shapes, self.dtype)

    def __len__(self) -> int:
        return len(self.arrays)

    def __repr__(self) -> str:
        return f"<symopt.FlatBuffer: {len(self.arrays)} arrays, {self.flat.size} elements, {self.dtype}>"
