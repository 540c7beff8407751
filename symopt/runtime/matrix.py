"""The runtime of matrix rules (a rule with an ``Iterate``, ``generated/`` modules of
``matrix_module.py.jinja``): per tensor, one call of the generated ``<prefix>_<dtype>``
(pass 0, the iteration in BLAS, pass 1), with workspaces allocated once.

Each param of shape ``(d0, d1, …)`` (at least 2-D) is the ``d0 × (d1⋯)`` matrix.  The
workspaces are sized for the largest tensor and shared: two flat buffers of its element
count and one of ``square_buffers(rows, cols)`` (a function of the generated module: 3, or 6
where the iteration runs in the Gram space) times ``min(rows, cols)²``.  A step first counts the NaN/inf gradient values of
every stepped tensor (the generated ``<prefix>_<dtype>_check``) and writes nothing if there
is one, as the elementwise kernels do.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MatrixStep", "setup"]


class MatrixStep:
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
        squares = max(module.square_buffers(r, c) * min(r, c) ** 2 for r, c in self.shapes)
        self.work, self.other = np.empty(size, dtype), np.empty(size, dtype)
        self.squares = np.empty(squares, dtype)
        self.nscalars = int(vinfo["nscalars"])
        self.scal = np.zeros(self.nscalars + int(vinfo["matrix"]["ntensor_scalars"]), dtype=np.float64)
        prefix = vinfo["prefix"]
        self.check = getattr(module, f"{prefix}_{suffix}_check")
        self.tensor = getattr(module, f"{prefix}_{suffix}")

    def __call__(self, pptr, gptr, state: list, offs, chunks, scal, check: bool) -> int:
        """Step every tensor of ``chunks`` (rows: j, start, stop, scalar row); returns the NaN/inf count."""
        if check:
            nbad = int(self.check(gptr, chunks))
            if nbad:
                return nbad
        ns, ext = self.nscalars, self.scal
        for j, lo, hi, row in chunks.tolist():
            n = hi - lo
            rows, cols = self.shapes[j]
            ext[:ns] = scal[row, :ns]
            o = int(offs[j])
            self.tensor(int(pptr[j]), int(gptr[j]), n, *[buf[o:o + n] for buf in state], self.work[:n],
                        self.other[:n], self.squares, ext, rows, cols)
        return 0


def setup(module, vinfo: dict, tensors: list, suffix: str, name: str):
    """A :class:`MatrixStep` for a matrix variant, None for an elementwise one."""
    return MatrixStep(module, vinfo, tensors, suffix, name) if "matrix" in vinfo else None
