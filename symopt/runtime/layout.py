"""Work tables and per-step helpers of :meth:`symopt.Optimizer.step` (no SymPy).

A generated kernel updates every tensor of an optimizer in one compiled call.  It
walks a table of rows ``chunks[c] = (j, lo, hi, row)`` -- elements ``lo:hi`` of
tensor ``j`` with the per-step scalars ``scal[row]`` -- grouped into workers:
worker ``w`` runs rows ``work[w]:work[w + 1]`` in order, and the parallel kernel
gives each worker one ``prange`` iteration (one thread).  :func:`plan_rows` cuts
the tensors into ``nworkers`` runs of equal element count (cut points on whole
cache lines), so each thread streams one contiguous stretch of memory and the
threads finish together however the sizes of the tensors are mixed.

The helpers here run once per step, so each costs well under a microsecond:
:func:`data_address` reads an array's data pointer, :func:`words_unchanged` tells
whether arrays still have the type, data pointer, dtype, flags, shape and strides
:func:`array_words` saw (the check of a step given the same grads again),
:func:`uniform_step` and :func:`advance` keep the per-tensor step counts,
:func:`flat_base` tells whether a list of arrays lies back to back in one buffer
(then the kernel steps them as a single segment), and :func:`kernel_frame` packs a
kernel's arguments into the one array that its ``_frame`` twin takes.
"""

from __future__ import annotations

import ctypes

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from ..cachedirs import numba_disk_cache
from ..frame_abi import FRAME_HEAD, FRAME_TAIL, frame_arrays

#: numba's disk cache for the helpers below (off only when no folder at all is writable: symopt.cachedirs).
_CACHE = numba_disk_cache()

#: Cut points between workers are multiples of this many elements (64 bytes and more).
ALIGN = 64


def plan_rows(segments, nworkers: int):
    """``(chunks, work)`` for ``segments`` = [(j, lo, hi, row), ...] in memory order.

    With ``nworkers`` > 1 the segments are cut so that worker ``w`` gets elements
    ``[w * total / nworkers, (w + 1) * total / nworkers)`` of their concatenation
    (cut points rounded to :data:`ALIGN` elements); empty segments are dropped.
    """
    segs = [s for s in segments if s[2] > s[1]]
    total = sum(hi - lo for _, lo, hi, _ in segs)
    nworkers = max(1, int(nworkers))
    if nworkers == 1 or total < 2 * ALIGN:
        chunks = np.array(segs, dtype=np.int64).reshape(-1, 4)
        return chunks, np.array([0, len(segs)], dtype=np.int64)
    cuts = [min(total, -(-(w * total // nworkers) // ALIGN) * ALIGN) for w in range(1, nworkers)] + [total]
    rows, work = [], [0]
    done = 0        # elements of the concatenation already assigned
    w = 0
    for j, lo, hi, row in segs:
        while lo < hi:
            take = min(hi - lo, cuts[w] - done)
            if take > 0:
                rows.append((j, lo, lo + take, row))
                lo += take
                done += take
            if done == cuts[w] and w < nworkers - 1:
                work.append(len(rows))
                w += 1
    while len(work) < nworkers:
        work.append(len(rows))
    work.append(len(rows))
    return np.array(rows, dtype=np.int64).reshape(-1, 4), np.array(work, dtype=np.int64)


def _data_offset():
    """Byte offset of the data pointer inside a NumPy array object, or None.

    NumPy's C struct (``PyArrayObject_fields``) keeps ``char *data`` right after the
    object header; it is found here by comparison with ``__array_interface__`` on
    two probe arrays, so an unexpected layout only disables the fast path.
    """
    probes = (np.empty(7), np.empty((3, 5), np.float32)[1:])
    for off in range(8, 65, 8):
        try:
            if all(ctypes.c_void_p.from_address(id(a) + off).value == a.__array_interface__["data"][0]
                   for a in probes):
                return off
        except Exception:  # pragma: no cover - ctypes refused the read
            return None
    return None  # pragma: no cover


#: Offset of ``data`` in a ``numpy.ndarray`` object (None: use ``__array_interface__``).
DATA_OFFSET = _data_offset()
_read_pointer = ctypes.c_void_p.from_address
_read_word = ctypes.c_int64.from_address


def _word_addresses(a) -> list:
    """Addresses of the 8-byte words that hold everything a step checks of ndarray ``a``, in the order
    :func:`words_unchanged` must read them: its type, data pointer, ``nd``, pointers to its shape and
    strides, dtype and flags (NumPy's ``PyArrayObject_fields``: ``ob_type`` right before ``data``, then
    ``nd``, ``dimensions``, ``strides``, ``base``, ``descr``, ``flags``), then its shape and strides."""
    b = id(a) + DATA_OFFSET
    head = [b - 8, b, b + 8, b + 16, b + 24, b + 40, b + 48]
    dims, strides = _read_word(b + 16).value, _read_word(b + 24).value
    return head + [dims + 8 * k for k in range(a.ndim)] + [strides + 8 * k for k in range(a.ndim)]


def _header_layout() -> bool:
    """Whether :func:`_word_addresses` reads NumPy's array struct as laid out here (checked on probes
    whose every field differs; False disables the fast path of a repeated step)."""
    if DATA_OFFSET is None:
        return False
    base = np.zeros((4, 6), np.float32)
    probes = (np.empty(7), base[1:, ::2], base.T)
    probes[1].flags.writeable = False
    try:
        for a in probes:
            w = [_read_word(x).value for x in _word_addresses(a)]
            nd = a.ndim
            if (w[0] != id(np.ndarray) or w[1] != a.__array_interface__["data"][0] or w[2] & 0xFFFFFFFF != nd
                    or w[5] != id(a.dtype) or w[6] & 0xFFFFFFFF != a.flags.num
                    or tuple(w[7:7 + nd]) != a.shape or tuple(w[7 + nd:]) != a.strides):
                return False
    except Exception:  # pragma: no cover - ctypes refused the read
        return False
    return True


#: Whether :func:`array_words` may be used (NumPy's array struct is laid out as expected).
HEADER_LAYOUT = _header_layout()


def array_words(arrays) -> np.ndarray:
    """``[addresses, values]`` (int64, two rows) of the words that describe each of ``arrays`` now (type, data
    pointer, dtype, flags, shape, strides): :func:`words_unchanged` tells whether they still hold these values.
    Only for plain ndarrays that stay alive (or whose ids are checked to belong to live arrays) while it is used."""
    addrs = [x for a in arrays for x in _word_addresses(a)]
    return np.array([addrs, [_read_word(x).value for x in addrs]], dtype=np.int64)


@intrinsic
def _load_word(typingctx, addr):
    """The int64 at address ``addr``."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.load(builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.int64))))

    return sig, codegen


@numba.njit(cache=_CACHE, nogil=True)
def words_unchanged(table):
    """Whether every word at ``table[0, i]`` still holds ``table[1, i]`` (:func:`array_words`), read in order and
    stopping at the first change: an array's type word comes first, so the rest of it is read only from a
    plain ndarray, and its shape and strides only through the pointers it still has."""
    for i in range(table.shape[1]):
        if _load_word(table[0, i]) != table[1, i]:
            return False
    return True


def data_address(a) -> int:
    """Address of the first element of ndarray ``a`` (~0.1 µs; ``a.ctypes.data`` takes ~1 µs)."""
    if DATA_OFFSET is None or type(a) is not np.ndarray:
        return a.__array_interface__["data"][0]
    return _read_pointer(id(a) + DATA_OFFSET).value or 0


@numba.njit(cache=_CACHE, nogil=True)
def uniform_step(steps, active):
    """The common step count of the tensors with ``active[j]``; -1 if they differ (or none is active)."""
    t = -1
    for j in range(steps.shape[0]):
        if active[j]:
            if t < 0:
                t = steps[j]
            elif steps[j] != t:
                return -1
    return t


@numba.njit(cache=_CACHE, nogil=True)
def advance(steps, active):
    """``steps[j] += 1`` for every ``active[j]``."""
    for j in range(steps.shape[0]):
        if active[j]:
            steps[j] += 1


@numba.njit(cache=_CACHE, nogil=True)
def flat_base(ptrs, byte_offsets):
    """Base address ``b`` with ``ptrs[j] == b + byte_offsets[j]`` for every ``byte_offsets[j] >= 0``; -1 if none.

    Entries with a negative offset (empty tensors, whose address does not matter) are ignored.
    """
    base = -1
    for j in range(ptrs.shape[0]):
        if byte_offsets[j] >= 0:
            b = ptrs[j] - byte_offsets[j]
            if base < 0:
                base = b
            elif b != base:
                return -1
    return base


def kernel_frame(dtype, args) -> np.ndarray:
    """The arguments ``args = (pptr, gptr, *state, offs, chunks, work, scal, hyp, words, steps, check)`` of a
    flat-ABI kernel of float ``dtype`` as the one int64 array that its ``<kernel>_frame`` twin takes: each
    array's data address then its shape, in argument order, then ``check`` as 0 or 1.

    numba's dispatcher types every argument of a call (~70 ns an array): one argument instead of twelve or
    more saves about 0.5 µs a step.  The twin reads the arrays at these addresses, so each is checked here
    (dtype, dimensions, C order, writeable where the kernel writes: the tables of ``symopt.frame_abi``) and
    the caller keeps ``args`` alive, unchanged, for as long as it calls the twin with this frame.
    """
    *arrays, check = args
    nstate = len(arrays) - len(FRAME_HEAD) - len(FRAME_TAIL)
    if nstate < 0 or type(check) is not bool:
        raise TypeError(f"kernel_frame: expected (pptr, gptr, *state, offs, chunks, work, scal, hyp, words, steps, "
                        f"check), got {len(args)} arguments ending in {check!r}")
    frame = []
    for a, (name, want, ndim, writes) in zip(arrays, frame_arrays(np.dtype(dtype).name, nstate)):
        if (type(a) is not np.ndarray or a.dtype != want or a.ndim != ndim or not a.flags.c_contiguous
                or (writes and not a.flags.writeable)):
            raise ValueError(f"kernel_frame: {name} must be a C-contiguous{' writeable' if writes else ''} "
                             f"{np.dtype(want)} array of {ndim} dimension(s), got "
                             f"{type(a).__name__} {getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}")
        frame.append(data_address(a))
        frame.extend(a.shape)
    frame.append(int(check))
    return np.array(frame, dtype=np.int64)
