"""The runtime of matrix rules (a rule with an ``Iterate``, ``generated/`` modules of
``matrix_module.py.jinja``): per tensor, one call of the generated ``<prefix>_<dtype>``
(pass 0, the iteration in BLAS, pass 1), with workspaces allocated once.

Each param of shape ``(d0, d1, …)`` (at least 2-D) is the ``d0 × (d1⋯)`` matrix, or the
matrices its param group's ``dimension_numbers`` select (Optax's ``MuonDimensionNumbers``:
reduction axes × output axes, the other axes batch axes; :func:`matrix_layout`).  The
workspaces are sized for the largest tensor and shared: two flat buffers of its element
count and one of ``square_buffers(rows, cols)`` (a function of the generated module: 3, or 6
where the iteration runs in the Gram space) times ``min(rows, cols)²``.  A step first counts the NaN/inf gradient values of
every stepped tensor (the generated ``<prefix>_<dtype>_check``) and writes nothing if there
is one, as the elementwise kernels do.
"""

from __future__ import annotations

import math

import numpy as np

from .preconditioned import PreconditionedStep

__all__ = ["MatrixStep", "FactoredStep", "factored_layout", "factored_axes", "factored_index", "state_shape", "setup",
           "dimension_numbers", "matrix_layout"]


def dimension_numbers(value, where: str):
    """``(reduction_axes, output_axes)``, two tuples of ints, from Optax's ``MuonDimensionNumbers``
    (``reduction_axis``, ``output_axis``: an int or a sequence of ints each), a dict with those keys,
    or a pair; None stays None (the default ``d0 × (d1⋯)``)."""
    if value is None:
        return None
    if isinstance(value, dict):
        extra = set(value) - {"reduction_axis", "output_axis"}
        if extra:
            raise ValueError(f"{where}: dimension_numbers has unknown keys {sorted(extra)}; "
                             f"give reduction_axis and output_axis")
        pair = (value.get("reduction_axis", 0), value.get("output_axis", 1))
    elif hasattr(value, "reduction_axis") and hasattr(value, "output_axis"):
        pair = (value.reduction_axis, value.output_axis)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        pair = tuple(value)
    else:
        raise TypeError(f"{where}: dimension_numbers must be a MuonDimensionNumbers, a dict with reduction_axis "
                        f"and output_axis, or a (reduction_axis, output_axis) pair, got {value!r}")
    out = []
    for name, axes in zip(("reduction_axis", "output_axis"), pair):
        axes = axes if isinstance(axes, (tuple, list)) else (axes,)
        norm = []
        for ax in axes:
            # ints, and integral floats as a JSON checkpoint reads them back
            if isinstance(ax, bool) or not isinstance(ax, (int, float, np.integer, np.floating)) or ax != int(ax):
                raise TypeError(f"{where}: dimension_numbers {name} must hold integers, got {ax!r}")
            norm.append(int(ax))
        if not norm:
            raise ValueError(f"{where}: dimension_numbers {name} is empty")
        out.append(tuple(norm))
    return tuple(out)


def matrix_layout(shape, dims, where: str):
    """``(batch, rows, cols, flip)`` of a param of ``shape`` read as matrices by ``dims`` (see
    :func:`dimension_numbers`).

    As in Optax, the axes in neither ``reduction_axes`` nor ``output_axes`` are batch axes (each
    batch element a matrix of its own: its own norm and iteration), and the matrix is
    ``rows × cols`` = (product of the reduction axes) × (product of the output axes).  The
    iteration reads each matrix in place, so the batch axes must lead and the reduction and output
    axes must each be one run of consecutive axes after them; ``flip`` when the output axes come
    first (the memory holds the matrix transposed; the order of the axes inside a run does not
    matter: the iteration commutes with permutations of rows and columns).  None: ``d0 × (d1⋯)``.
    """
    nd = len(shape)
    if dims is None:
        return 1, int(shape[0]), int(np.prod(shape[1:], dtype=np.int64)), False
    red, outp = ([ax % nd if -nd <= ax < nd else None for ax in axes] for axes in dims)
    if None in red or None in outp:
        raise ValueError(f"{where}: dimension_numbers {dims} name an axis outside a param of shape {shape}")
    if len(set(red)) != len(red) or len(set(outp)) != len(outp) or set(red) & set(outp):
        raise ValueError(f"{where}: dimension_numbers {dims} must name distinct axes, reduction and output axes "
                         f"disjoint (param shape {shape})")
    nb = nd - len(red) - len(outp)
    first, second = (outp, red) if min(outp) < min(red) else (red, outp)
    if (sorted(first) != list(range(nb, nb + len(first)))
            or sorted(second) != list(range(nb + len(first), nd))):
        raise ValueError(f"{where}: dimension_numbers {dims} on a param of shape {shape}: symopt reads each matrix "
                         f"in place, so the batch axes must be the leading ones and the reduction and output axes "
                         f"each one run of consecutive axes after them (move the axes of the param)")
    size = lambda axes: int(np.prod([shape[a] for a in axes], dtype=np.int64))
    return size(range(nb)), size(red), size(outp), first is outp


class MatrixStep:
    """Steps the tensors of ``chunks`` one after another (each batch matrix of a tensor in turn)
    through the generated per-tensor function."""

    def __init__(self, module, vinfo: dict, tensors: list, suffix: str, name: str, dims=None):
        for j, p in enumerate(tensors):
            if p.ndim < 2:
                raise ValueError(f"{name}: params[{j}] has shape {p.shape}; {name} reads each param as a matrix "
                                 f"(at least 2-D: d0 × (d1⋯)); give 1-D params their own optimizer "
                                 f"(or a param group with another rule)")
        dims = dims or [None] * len(tensors)
        #: (batch, rows, cols, flip) per tensor
        self.layouts = [matrix_layout(p.shape, d, f"{name}: params[{j}]") for j, (p, d) in enumerate(zip(tensors, dims))]
        dtype = tensors[0].dtype
        self.itemsize = dtype.itemsize
        size = max(r * c for _, r, c, _ in self.layouts)
        squares = max(module.square_buffers(r, c) * min(r, c) ** 2 for _, r, c, _ in self.layouts)
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
        ns, ext, item = self.nscalars, self.scal, self.itemsize
        for j, lo, hi, row in chunks.tolist():
            batch, rows, cols, flip = self.layouts[j]
            n = rows * cols
            ext[:ns] = scal[row, :ns]
            o, p0, g0 = int(offs[j]), int(pptr[j]), int(gptr[j])
            for k in range(batch):
                at = k * n
                self.tensor(p0 + item * at, g0 + item * at, n, *[buf[o + at:o + at + n] for buf in state],
                            self.work[:n], self.other[:n], self.squares, ext, rows, cols, flip)
        return 0


#: Elements per block of the threaded NaN/inf check of a factored rule's grads (its prange iterations).
CHECK_BLOCK = 1 << 16


class FactoredStep:
    """Steps the tensors of ``chunks`` one after another through a factored rule's generated functions.

    A param of at least two dimensions in the ``matrix`` layout is ``nb`` stacked ``nr × nc``
    matrices over its two matrix axes (:func:`factored_axes`; the kernel walks them in place by
    :func:`factored_index`: ``<prefix>_<dtype>_matrix``, or for a stack of two or more matrices of
    at least ``threaded_from`` elements its threaded twin ``<prefix>_<dtype>_matrix_threads``, the
    matrices over numba's threads, whose result does not depend on the thread count; the twin and
    the serial kernel sum alike, but LLVM may reassociate an element's products differently in the
    two, so they can differ by an ulp); one in the ``vector`` layout is one ``1 × n`` matrix
    (``<prefix>_<dtype>_vector``).  Each layout keeps its own states (``state_shape``); the float64
    workspace of row/column means, per-matrix values and per-matrix partials of the tensor
    reductions is sized once for the largest tensor.
    """

    def __init__(self, module, vinfo: dict, tensors: list, suffix: str, state_offs: list, layouts: list,
                 axes: list | None = None):
        prefix = vinfo["prefix"]
        info = vinfo["factored"]
        keys = [s["key"] for s in vinfo["state"]]
        axes = axes or [None] * len(tensors)
        # per tensor: (function, threaded twin or None, nb, nr, nc, offsets, strides,
        #              [(state index, offset, size)...])
        self.calls = []
        need = 1
        for j, (p, layout, ax) in enumerate(zip(tensors, layouts, axes)):
            shape = tuple(p.shape)
            if layout == "matrix":
                ax = ax if ax is not None else factored_axes(shape)
                nr, nc = int(shape[ax[0]]), int(shape[ax[1]])
                offsets, strides = factored_index(shape, ax)
            else:
                nr, nc = 1, int(p.size)
                offsets, strides = np.zeros((3, 1), dtype=np.int64), np.array([nc, 1, 1, 1, 1], dtype=np.int64)
            nb = offsets.shape[1] if nr * nc else 0
            lay = info[layout]
            need = max(need, lay["row"] * nb * nr + lay["col"] * nb * nc + (lay["matrix"] + lay["tensor"]) * nb)
            states = []
            for key in lay["states"]:
                k = keys.index(key)
                sshape = state_shape(vinfo["state"][k].get("shape", "full"), shape, layout, ax)
                states.append((k, int(state_offs[k][j]), math.prod(sshape)))
            fn = getattr(module, f"{prefix}_{suffix}_{layout}")
            twin = getattr(module, f"{fn.__name__}_threads") if layout == "matrix" and nb >= 2 else None
            self.calls.append((fn, twin, nb, nr, nc, offsets, strides, states))
        self.ws = np.empty(need, dtype=np.float64)
        self.check = getattr(module, f"{prefix}_{suffix}_check")
        self.check_threads = getattr(module, f"{prefix}_{suffix}_check_threads")
        self.blocks: dict = {}   # the threaded check's blocks per tuple of stepped tensors
        self.nscalars = int(vinfo["nscalars"])

    def __call__(self, pptr, gptr, state: list, offs, chunks, scal, check: bool, threaded_from: int) -> int:
        """Step every tensor of ``chunks`` (rows: j, start, stop, scalar row); returns the NaN/inf count.
        ``threaded_from``: elements from which the grads are checked, and a stack of matrices stepped,
        in threads (the optimizer's ``parallel_threshold``)."""
        rows = chunks.tolist()
        if check:
            if sum(hi - lo for _, lo, hi, _ in rows) >= threaded_from:
                nbad = int(self.check_threads(gptr, self._check_blocks(rows)))
            else:
                nbad = int(self.check(gptr, chunks))
            if nbad:
                return nbad
        ws, ns = self.ws, self.nscalars
        for j, lo, hi, row in rows:
            fn, twin, nb, nr, nc, offsets, strides, states = self.calls[j]
            if hi > lo:
                if twin is not None and hi - lo >= threaded_from:
                    fn = twin
                fn(int(pptr[j]), int(gptr[j]), nb, nr, nc, offsets, strides,
                   *[state[k][o:o + n] for k, o, n in states], ws, scal[row, :ns])
        return 0

    def _check_blocks(self, rows) -> np.ndarray:
        """The threaded check's table for ``rows``: int64 rows (tensor j, start, stop) of at most
        :data:`CHECK_BLOCK` elements each, cached per tuple of stepped tensors."""
        key = tuple(r[0] for r in rows)
        blocks = self.blocks.get(key)
        if blocks is None:
            if len(self.blocks) > 64:
                self.blocks.clear()
            blocks = np.array([(j, at, min(at + CHECK_BLOCK, hi)) for j, lo, hi, _ in rows
                               for at in range(lo, hi, CHECK_BLOCK)], dtype=np.int64).reshape(-1, 3)
            self.blocks[key] = blocks
        return blocks


def factored_layout(shape: tuple, min_dim=None, where: str = "") -> str:
    """The layout of a factored rule's param of ``shape``: ``"matrix"`` (row/column states over two
    of its axes, :func:`factored_axes`) or ``"vector"`` (full-shape states).  ``min_dim`` None: every
    ≥2-D param is a matrix (torch.optim.Adafactor); else, as Optax's ``_factored_dims``, a ≥2-D param
    is a matrix when the second largest of its axes has at least ``min_dim`` entries."""
    shape = tuple(shape)
    if len(shape) < 2:
        return "vector"
    if min_dim is None:
        return "matrix"
    return "vector" if shape[int(np.argsort(shape)[-2])] < min_dim else "matrix"


def factored_axes(shape: tuple, min_dim=None) -> tuple:
    """``(row_axis, col_axis)`` of a ≥2-D param of ``shape`` read as a stack of matrices, the other
    axes batch axes in their order: the last two (torch.optim.Adafactor) when ``min_dim`` is None,
    else Optax's ``_factored_dims``: ``d1, d0 = argsort(shape)[-2:]`` -- the second largest axis
    holds the rows and the largest the columns (a row state is the mean over ``d0``); ties go as
    NumPy's ``argsort`` orders them (Optax's own choice)."""
    shape = tuple(shape)
    if min_dim is None or len(shape) < 2:
        return max(len(shape) - 2, 0), max(len(shape) - 1, 0)
    order = np.argsort(shape)
    return int(order[-2]), int(order[-1])


def _batch_offsets(shape: tuple, axes: tuple) -> np.ndarray:
    """The C-order offset of element 0 of each matrix of an array of ``shape`` whose axes ``axes``
    are the matrix (the other axes enumerated in C order): int64, one per matrix."""
    strides = [math.prod(shape[a + 1:]) for a in range(len(shape))]
    off = np.zeros(1, dtype=np.int64)
    for a in range(len(shape)):
        if a not in axes:
            off = (off[:, None] + np.arange(shape[a], dtype=np.int64)[None, :] * strides[a]).ravel()
    return off


def factored_index(shape: tuple, axes: tuple):
    """How a factored kernel walks a param of ``shape`` over the matrices ``axes`` (row, column)
    without moving it: ``(offsets, strides)``, ``offsets`` int64 ``(3, nb)`` the C-order offset of
    each matrix's first element in the param, its row state (shape ``state_shape("row")``) and
    its column state, ``strides`` int64 ``(5,)`` the steps of a row and a column in the param, of
    a row in the row state, of a column in the column state, and 1 when these are those of the
    last two axes (``b·nr·nc + i·nc + j``, ``b·nr + i``, ``b·nc + j``; the kernel's fast loop), else 0."""
    shape = tuple(int(x) for x in shape)
    r, c = axes
    rshape, cshape = tuple(1 if a == c else x for a, x in enumerate(shape)), \
        tuple(1 if a == r else x for a, x in enumerate(shape))
    offsets = np.stack([_batch_offsets(s, axes) for s in (shape, rshape, cshape)])
    step = lambda s, a: math.prod(s[a + 1:])
    strides = [step(shape, r), step(shape, c), step(rshape, r), step(cshape, c)]
    nr, nc, nb = shape[r], shape[c], offsets.shape[1]
    b = np.arange(nb, dtype=np.int64)
    last_two = (strides == [nc, 1, 1, 1] and np.array_equal(offsets[0], b * nr * nc)
                and np.array_equal(offsets[1], b * nr) and np.array_equal(offsets[2], b * nc))
    return offsets, np.array([*strides, int(last_two)], dtype=np.int64)


def state_shape(kind: str, shape: tuple, layout: str | None = None, axes: tuple | None = None):
    """The shape of a state of ``kind`` (``full``/``row``/``col``/``vector``: FAMILY's ``"shape"``) for a
    param of ``shape`` in ``layout`` (:func:`factored_layout`; None: by the param's ndim) over the
    matrix ``axes`` (:func:`factored_axes`; None: the last two), or None when such a param does not
    keep it.  A row state is the param's shape with the column axis 1 (torch.optim.Adafactor's
    ``row_var`` ``(…, m, 1)``), a column state with the row axis 1 (``col_var`` ``(…, 1, n)``);
    ``vector`` states are kept by params that are not factored."""
    shape = tuple(shape)
    if kind == "full":
        return shape
    layout = layout or factored_layout(shape)
    if kind == "vector":
        return shape if layout == "vector" else None
    if layout == "vector":
        return None
    r, c = axes if axes is not None else (len(shape) - 2, len(shape) - 1)
    one = c if kind == "row" else r
    return tuple(1 if a == one else x for a, x in enumerate(shape))


def setup(module, vinfo: dict, tensors: list, suffix: str, name: str, state_offs: list, dims=None, layouts=None,
          first_scalars=None, axes=None):
    """A :class:`MatrixStep` for a matrix variant (a :class:`~.preconditioned.PreconditionedStep`
    for one with matrix states), a :class:`FactoredStep` for a factored one, None for an elementwise
    one (``state_offs``: per state, each tensor's offset in its flat buffer; ``dims``: per tensor,
    :func:`dimension_numbers` or None; ``layouts``: per tensor, a factored rule's :func:`factored_layout`;
    ``first_scalars(j)``: the per-step scalars of tensor ``j``'s first step, for a preconditioned rule)."""
    if "factored" in vinfo:
        if any(d is not None for d in (dims or ())):
            raise ValueError(f"{name}: dimension_numbers is for Newton–Schulz rules (muon); {name} reads a param "
                             f"as a stack of matrices over two of its axes")
        return FactoredStep(module, vinfo, tensors, suffix, state_offs,
                            layouts or [factored_layout(p.shape) for p in tensors], axes)
    if "matrix" not in vinfo:
        return None
    if vinfo["matrix"].get("kind") == "preconditioned":
        if any(d is not None for d in (dims or ())):
            raise ValueError(f"{name}: dimension_numbers is for Newton–Schulz rules (muon); {name} reads each "
                             f"param as d0 × (d1⋯)")
        return PreconditionedStep(module, vinfo, tensors, suffix, name, first_scalars)
    return MatrixStep(module, vinfo, tensors, suffix, name, dims)
