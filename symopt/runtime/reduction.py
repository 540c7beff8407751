"""Running the reduction passes of rules with reductions (global norms, trust ratios...).

A generated module whose variant has a ``"reduce"`` entry in ``FAMILY`` holds a
``<prefix>_reduce_<dtype>`` kernel (and ``_parallel``) next to the elementwise
one.  Before the elementwise call of a step, :class:`ReductionStep`:

1. runs the reduce kernel on the same chunk table and per-step scalar rows: it
   reads params, grads and state (writing none of them) and fills ``ext``, one
   float64 row per tensor: the tensor's per-step scalars followed by its
   per-tensor scalars (a clipping factor, a trust ratio...);
2. hands the elementwise kernel ``ext`` as its scalar table and a chunk table whose
   scalar-row column is the tensor index.

The elementwise kernel's signature and its non-finite check are unchanged: a NaN
gradient still leaves every param and state untouched.  Nothing is allocated in
proportion to the number of elements.
"""

from __future__ import annotations

import numpy as np


class ReductionStep:
    """The reduction passes of one optimizer (built once, called every step)."""

    def __init__(self, module, variant: dict, ntensors: int, suffix: str):
        info = variant["reduce"]
        base = info["kernel"]
        self.serial = getattr(module, f"{base}_{suffix}")
        self.parallel = getattr(module, f"{base}_{suffix}_parallel")
        self.ext = np.zeros((ntensors, variant["nscalars"] + info["ntensor"]), dtype=np.float64)
        self._tables: dict = {}  # id(chunks) -> (chunks, the same rows with scalar row = tensor index)

    @staticmethod
    def _by_tensor(chunks):
        out = chunks.copy()
        out[:, 3] = out[:, 0]
        return out

    def __call__(self, pptr, gptr, state, offs, chunks, scal, parallel: bool):
        """Run the passes on the elementwise kernel's arguments (``state``: the list of flat
        state buffers); returns the (chunks, scalar table) for the elementwise kernel."""
        kernel = self.parallel if parallel else self.serial
        kernel(pptr, gptr, *state, offs, chunks, scal, self.ext)
        hit = self._tables.get(id(chunks))
        if hit is None or hit[0] is not chunks:
            if len(self._tables) > 64:
                self._tables.clear()
            hit = self._tables[id(chunks)] = (chunks, self._by_tensor(chunks))
        return hit[1], self.ext


def setup(module, variant: dict, ntensors: int, suffix: str):
    """A :class:`ReductionStep` when ``variant`` (an entry of ``module.FAMILY["variants"]``) has
    reductions, else None."""
    return None if variant.get("reduce") is None else ReductionStep(module, variant, ntensors, suffix)
