"""The runtime of preconditioned matrix rules (``generated/`` modules of
``preconditioned_module.py.jinja``): per tensor, one call of the generated ``<prefix>_<dtype>``
(pass 0, the matrix states in BLAS/LAPACK, pass 1), with its matrix states and the shared
workspaces allocated once.

Each param of shape ``(d0, d1, …)`` (at least 2-D) is the ``rows × cols = d0 × (d1⋯)`` matrix;
its matrix states are column-major ``rows × rows`` or ``cols × cols`` arrays, set to their
initial value ``c·I`` at the tensor's first step (``c`` a per-step scalar of the first step's
hyperparameters, as pytorch-optimizer fills its state at the first step).  The workspaces are
three flat buffers of the largest tensor's element count.  A step first counts the NaN/inf
gradient values of every stepped tensor and writes nothing if there is one.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PreconditionedStep"]


class PreconditionedStep:
    """Steps the tensors of ``chunks`` one after another through the generated per-tensor function."""

    def __init__(self, module, vinfo: dict, tensors: list, suffix: str, name: str):
        for j, p in enumerate(tensors):
            if p.ndim < 2:
                raise ValueError(f"{name}: params[{j}] has shape {p.shape}; {name} reads each param as a matrix "
                                 f"(at least 2-D: d0 × (d1⋯)); give 1-D params their own optimizer "
                                 f"(or a param group with another rule)")
        self.shapes = [(int(p.shape[0]), int(p.size // p.shape[0]) if p.shape[0] else 0) for p in tensors]
        dtype = tensors[0].dtype
        size = max(int(p.size) for p in tensors)
        self.work, self.tmp, self.result = (np.empty(size, dtype) for _ in range(3))
        self.specs = vinfo["matrix"]["states"]
        self.keys = tuple(s["key"] for s in self.specs)
        self.mats = [[np.zeros((r, r) if s["side"] == "rows" else (c, c), dtype=dtype, order="F")
                      for s in self.specs] for r, c in self.shapes]
        self.fresh = [True] * len(tensors)
        self.nscalars = int(vinfo["nscalars"])
        prefix = vinfo["prefix"]
        self.check = getattr(module, f"{prefix}_{suffix}_check")
        self.tensor = getattr(module, f"{prefix}_{suffix}")

    def reset(self, j: int) -> None:
        """Tensor ``j`` starts again: its matrix states take their initial value at its next step."""
        self.fresh[j] = True
        for m in self.mats[j]:
            m[...] = 0

    def load(self, j: int, arrays: list, *, started: bool) -> None:
        """Tensor ``j``'s matrix states from ``arrays`` (checked shapes, in :attr:`keys` order); a tensor
        not ``started`` (step count 0) takes the initial values at its next step instead."""
        if not started:
            self.reset(j)
            return
        for m, arr in zip(self.mats[j], arrays):
            m[...] = arr
        self.fresh[j] = False

    def state(self, j: int) -> dict:
        """Live views of tensor ``j``'s matrix states by key."""
        return dict(zip(self.keys, self.mats[j]))

    def _initialize(self, j: int, scal_row) -> None:
        for spec, m in zip(self.specs, self.mats[j]):
            m[...] = 0
            np.fill_diagonal(m, scal_row[spec["init_column"]] if "init_column" in spec else spec["init"])
        self.fresh[j] = False

    def __call__(self, pptr, gptr, state: list, offs, chunks, scal, check: bool) -> int:
        """Step every tensor of ``chunks`` (rows: j, start, stop, scalar row); returns the NaN/inf count."""
        if check:
            nbad = int(self.check(gptr, chunks))
            if nbad:
                return nbad
        for j, lo, hi, row in chunks.tolist():
            n = hi - lo
            rows, cols = self.shapes[j]
            if self.fresh[j]:
                self._initialize(j, scal[row])
            o = int(offs[j])
            self.tensor(int(pptr[j]), int(gptr[j]), n, *[buf[o:o + n] for buf in state], self.work[:n],
                        self.tmp[:n], self.result[:n], self.mats[j], scal[row], rows, cols)
        return 0
