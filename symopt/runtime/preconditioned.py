"""The runtime of preconditioned matrix rules (``generated/`` modules of
``preconditioned_module.py.jinja``): per tensor, one call of the generated ``<prefix>_<dtype>``
(the element passes, the matrix states in BLAS/LAPACK between them), with its matrix states and
the shared workspaces allocated once.

A rule reads each param one way (``every_axis`` in the variant's ``"matrix"`` record):

* every axis (Shampoo, SOAP as pytorch-optimizer writes them): the tensor's own shape ``dims``
  (a 0-D param has none); each matrix state ``key`` is kept once per axis ``k`` that the generated
  ``<prefix>_kept_axes`` keeps, as ``key_k`` (``d_k × d_k``).  Which axes keep states is fixed when
  the optimizer is built, from the first step's hyperparameters (pytorch-optimizer decides it at a
  param's first step); a step whose hyperparameters would change it is refused.  A rule may merge
  adjacent axes first (:func:`merge_small_dims`, SOAP's ``merge_dims``): ``dims`` is then the
  merged shape, a reshape of the C-order tensor;
* as a matrix (at least 2-D): ``dims = (d0, d1⋯)``, each state on the side its rule declares
  (``rows``: axis 0, ``cols``: axis 1), under its own key; a rule that rotates into eigenbases takes
  2-D params only (``max_ndim``), and a side longer than its size limit is refused before the step.

The matrix states are column-major square arrays, set to their initial value ``c·I`` at the tensor's
first step (``c`` a per-step scalar of the first step's hyperparameters, as pytorch-optimizer fills
its state at the first step).  The workspaces are flat buffers of the largest tensor's element count
(two per preconditioned value: its ``G`` and its value, and one for the products and transposed
copies) and one of the largest matrix state's (the eigendecompositions' copy).  A step first counts
the NaN/inf gradient values of every stepped tensor and writes nothing if there is one.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["PreconditionedStep", "axes_layout", "initial_diagonals", "merge_small_dims"]


def merge_small_dims(shape: tuple, limit: float) -> tuple:
    """pytorch-optimizer's ``merge_small_dims``: adjacent axes merged while their product stays at
    most ``limit`` (``(1, 2, 768, 1, 2048)`` → ``(2, 768, 2048)`` with 1024)."""
    merged, product = [], 1
    for d in shape:
        product *= d
        if product > limit:
            merged.append(product // d)
            product = d
    merged.append(product)
    return tuple(merged)


def axes_layout(module, vinfo: dict, shape: tuple, scal_row, name: str, j: int = 0) -> tuple:
    """``(dims, kept)`` of a param of shape ``shape`` under a rule that preconditions every axis, for the
    per-step scalars ``scal_row``: its axes (merged by :func:`merge_small_dims` where the rule's merge
    limit is positive) and, per axis, whether it keeps matrix states (the generated ``<prefix>_kept_axes``)."""
    merge = vinfo["matrix"].get("merge", {"value": 0.0})
    limit = float(scal_row[merge["column"]]) if "column" in merge else merge["value"]
    dims = tuple(int(d) for d in shape)
    if limit > 0:
        dims = merge_small_dims(dims, limit)
        if len(dims) < 2 and math.prod(shape) != 1:
            raise ValueError(f"{name}: params[{j}] has shape {tuple(shape)}, which merging axes up to {limit:g} "
                             f"makes one axis of {math.prod(shape)}: pytorch-optimizer cannot reshape it "
                             f"either (merge_dims needs at least two merged axes)")
    return dims, [bool(k) for k in getattr(module, f"{vinfo['prefix']}_kept_axes")(scal_row, dims)]


def initial_diagonals(vinfo: dict, scal_row) -> list:
    """The initial value ``c`` (of ``c·I``) of each matrix state, for the first step's scalars ``scal_row``."""
    return [float(scal_row[s["init_column"]]) if "init_column" in s else float(s["init"])
            for s in vinfo["matrix"]["states"]]


class PreconditionedStep:
    """Steps the tensors of ``chunks`` one after another through the generated per-tensor function.

    ``first_scalars(j)``: the per-step scalars of tensor ``j``'s first step (which axes keep states)."""

    def __init__(self, module, vinfo: dict, tensors: list, suffix: str, name: str, first_scalars):
        info = vinfo["matrix"]
        self.every_axis = bool(info.get("every_axis"))
        self.keep_all = bool(info.get("keep_all", True))
        max_ndim = info["max_ndim"]
        if not self.every_axis:
            for j, p in enumerate(tensors):
                if p.ndim < 2:
                    raise ValueError(f"{name}: params[{j}] has shape {p.shape}; {name} reads each param as a matrix "
                                     f"(at least 2-D: d0 × (d1⋯)); give 1-D params their own optimizer "
                                     f"(or a param group with another rule)")
                if max_ndim is not None and p.ndim > max_ndim:
                    raise ValueError(f"{name}: params[{j}] has shape {p.shape}; {name} takes {max_ndim}-D params "
                                     f"only")
        prefix = vinfo["prefix"]
        self.module, self.vinfo = module, vinfo
        self.merge = info.get("merge", {"value": 0.0})
        self.name = name
        self.shapes_in = [tuple(int(d) for d in p.shape) for p in tensors]
        # every axis: the tensor's axes (merged where the rule merges them) and which keep states,
        # fixed now from the first step's scalars; as a matrix: (d0, d1⋯)
        self.fixed_layout = self.every_axis and (not self.keep_all or "column" in self.merge
                                                 or self.merge["value"] > 0)
        if self.every_axis:
            layouts = [self._layout(j, first_scalars(j)) for j in range(len(tensors))]
            self.dims, self.kept = [d for d, _ in layouts], [k for _, k in layouts]
        else:
            self.dims = [(int(p.shape[0]), int(p.size // p.shape[0]) if p.shape[0] else 0) for p in tensors]
            self.kept = [None] * len(tensors)
        self.specs = info["states"]
        dtype = tensors[0].dtype
        self.mats = []
        for j, dims in enumerate(self.dims):
            per_state = []
            for s in self.specs:
                axes = ([k for k, kept in enumerate(self.kept[j]) if kept] if self.every_axis
                        else [0 if s["side"] == "rows" else 1])
                per_state.append([np.zeros((d, d), dtype=dtype, order="F") if k in axes else None
                                  for k, d in enumerate(dims)])
            self.mats.append(per_state)
        self.keys = [[s["key"] if not self.every_axis else f"{s['key']}_{k}"
                      for s, ms in zip(self.specs, per_state) for k, m in enumerate(ms) if m is not None]
                     for per_state in self.mats]
        size = max(int(p.size) for p in tensors)
        self.bufs = [np.empty(size, dtype) for _ in range(int(info["buffers"]))]
        self.tmp = np.empty(size, dtype)
        side = max((m.shape[0] for per_state in self.mats for ms in per_state for m in ms if m is not None),
                   default=0)
        self.square = np.empty(side * side, dtype)
        self.fresh = [True] * len(tensors)
        self.limits = info["limits"]
        self.check = getattr(module, f"{prefix}_{suffix}_check")
        self.tensor = getattr(module, f"{prefix}_{suffix}")

    def _layout(self, j: int, scal_row) -> tuple:
        """Tensor ``j``'s axes and, per axis, whether it keeps matrix states (:func:`axes_layout`)."""
        return axes_layout(self.module, self.vinfo, self.shapes_in[j], scal_row, self.name, j)

    def _arrays(self, j: int) -> list:
        """Tensor ``j``'s matrix states in :attr:`keys` order."""
        return [m for ms in self.mats[j] for m in ms if m is not None]

    def reset(self, j: int) -> None:
        """Tensor ``j`` starts again: its matrix states take their initial value at its next step."""
        self.fresh[j] = True
        for m in self._arrays(j):
            m[...] = 0

    def load(self, j: int, arrays: list, *, started: bool) -> None:
        """Tensor ``j``'s matrix states from ``arrays`` (checked shapes, in ``keys[j]`` order); a tensor
        not ``started`` (step count 0) takes the initial values at its next step instead."""
        if not started:
            self.reset(j)
            return
        for m, arr in zip(self._arrays(j), arrays):
            m[...] = arr
        self.fresh[j] = False

    def state(self, j: int) -> dict:
        """Live views of tensor ``j``'s matrix states by key."""
        return dict(zip(self.keys[j], self._arrays(j)))

    def shapes(self, j: int) -> tuple:
        """The shapes of tensor ``j``'s matrix states, in ``keys[j]`` order."""
        return tuple(m.shape for m in self._arrays(j))

    def _initialize(self, j: int, scal_row) -> None:
        for spec, ms in zip(self.specs, self.mats[j]):
            for m in ms:
                if m is not None:
                    m[...] = 0
                    np.fill_diagonal(m, scal_row[spec["init_column"]] if "init_column" in spec else spec["init"])
        self.fresh[j] = False

    def __call__(self, pptr, gptr, state: list, offs, chunks, scal, check: bool) -> int:
        """Step every tensor of ``chunks`` (rows: j, start, stop, scalar row); returns the NaN/inf count."""
        rows_of = chunks.tolist()
        for j, _, _, row in rows_of:    # checked before anything changes
            if self.fixed_layout and self._layout(j, scal[row]) != (self.dims[j], self.kept[j]):
                raise ValueError(f"{self.name}: params[{j}] of shape {self.shapes_in[j]}: these hyperparameters "
                                 f"change which axes keep matrix states (or how axes merge), which is fixed when "
                                 f"the optimizer is built (build a new optimizer)")
            for lim in self.limits:     # a side longer than an eigenbasis may rotate
                size = self.dims[j][0 if lim["side"] == "rows" else 1]
                limit = scal[row][lim["column"]] if "column" in lim else lim["value"]
                if size > limit:
                    raise ValueError(f"{self.name}: params[{j}] has {lim['side']} of length {size}, above "
                                     f"its eigenbasis size limit {limit:g}")
        if check:
            nbad = int(self.check(gptr, chunks))
            if nbad:
                return nbad
        for j, lo, hi, row in rows_of:
            n = hi - lo
            if self.fresh[j]:
                self._initialize(j, scal[row])
            o = int(offs[j])
            self.tensor(int(pptr[j]), int(gptr[j]), n, *[buf[o:o + n] for buf in state],
                        [b[:n] for b in self.bufs], self.tmp[:n], self.square, self.mats[j], scal[row],
                        self.dims[j])
        return 0
