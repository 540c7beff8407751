"""The runtime of matrix rules (a rule with an ``Iterate``, ``generated/`` modules of
``matrix_module.py.jinja``): per tensor, one call of the generated ``<prefix>_<dtype>``
(pass 0, the iteration in BLAS, pass 1), with workspaces allocated once.

Each param of shape ``(d0, d1, …)`` (at least 2-D) is the ``d0 × (d1⋯)`` matrix.  The
workspaces are sized for the largest tensor and shared: two flat buffers of its element
count and three of ``min(rows, cols)²``.  A step first counts the NaN/inf gradient values of
every stepped tensor (the generated ``<prefix>_<dtype>_check``) and writes nothing if there
is one, as the elementwise kernels do.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MatrixStep", "FactoredStep", "state_shape", "setup"]


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
        side = max(min(r, c) for r, c in self.shapes) ** 2
        self.work, self.other = np.empty(size, dtype), np.empty(size, dtype)
        self.gram, self.horner, self.spare = (np.empty(side, dtype) for _ in range(3))
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
                        self.other[:n], self.gram, self.horner, self.spare, ext, rows, cols)
        return 0


class FactoredStep:
    """Steps the tensors of ``chunks`` one after another through a factored rule's generated functions.

    A param of at least two dimensions, shape ``(…, nr, nc)``, is ``nb`` stacked ``nr × nc``
    matrices (the ``matrix`` layout: ``<prefix>_<dtype>_matrix``); one of fewer is one ``1 × n``
    matrix (``<prefix>_<dtype>_vector``).  Each layout keeps its own states (``state_shape``);
    the float64 workspace of row/column means and per-matrix values is sized once for the largest
    tensor.
    """

    def __init__(self, module, vinfo: dict, tensors: list, suffix: str, state_offs: list):
        prefix = vinfo["prefix"]
        info = vinfo["factored"]
        keys = [s["key"] for s in vinfo["state"]]
        self.calls = []     # per tensor: (function, nb, nr, nc, [(state index, size)...])
        need = 1
        for j, p in enumerate(tensors):
            layout = "matrix" if p.ndim >= 2 else "vector"
            if layout == "matrix":
                nr, nc = int(p.shape[-2]), int(p.shape[-1])
                nb = int(p.size // (nr * nc)) if nr * nc else 0
            else:
                nb, nr, nc = 1, 1, int(p.size)
            lay = info[layout]
            need = max(need, lay["row"] * nb * nr + lay["col"] * nb * nc + lay["matrix"] * nb)
            states = []
            for key in lay["states"]:
                k = keys.index(key)
                shape = state_shape(vinfo["state"][k].get("shape", "full"), p.shape)
                states.append((k, int(state_offs[k][j]), math.prod(shape)))
            self.calls.append((getattr(module, f"{prefix}_{suffix}_{layout}"), nb, nr, nc, states))
        self.ws = np.empty(need, dtype=np.float64)
        self.sizes = np.array([p.size for p in tensors], dtype=np.int64)
        self.check = getattr(module, f"{prefix}_{suffix}_check")
        self.nscalars = int(vinfo["nscalars"])

    def __call__(self, pptr, gptr, state: list, offs, chunks, scal, check: bool) -> int:
        """Step every tensor of ``chunks`` (rows: j, start, stop, scalar row); returns the NaN/inf count."""
        rows = chunks.tolist()
        if check:
            js = [r[0] for r in rows]
            nbad = int(self.check(gptr[js], self.sizes[js]))
            if nbad:
                return nbad
        ws, ns = self.ws, self.nscalars
        for j, lo, hi, row in rows:
            fn, nb, nr, nc, states = self.calls[j]
            if hi > lo:
                fn(int(pptr[j]), int(gptr[j]), nb, nr, nc, *[state[k][o:o + n] for k, o, n in states], ws,
                   scal[row, :ns])
        return 0


def state_shape(kind: str, shape: tuple):
    """The shape of a state of ``kind`` (``full``/``row``/``col``/``vector``: FAMILY's ``"shape"``) for a
    param of ``shape``, or None when such a param does not keep it (torch.optim.Adafactor's
    ``row_var`` ``(…, m, 1)``, ``col_var`` ``(…, 1, n)`` for ≥2-D params, ``variance`` for the others)."""
    shape = tuple(shape)
    if kind == "full":
        return shape
    if kind == "vector":
        return shape if len(shape) < 2 else None
    if len(shape) < 2:
        return None
    return shape[:-1] + (1,) if kind == "row" else shape[:-2] + (1, shape[-1])


def setup(module, vinfo: dict, tensors: list, suffix: str, name: str, state_offs: list):
    """A :class:`MatrixStep` for a matrix variant, a :class:`FactoredStep` for a factored one, None for an
    elementwise one."""
    if "factored" in vinfo:
        return FactoredStep(module, vinfo, tensors, suffix, state_offs)
    return MatrixStep(module, vinfo, tensors, suffix, name) if "matrix" in vinfo else None
