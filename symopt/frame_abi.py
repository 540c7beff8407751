"""The frame of a flat-ABI kernel: the one int64 array its ``<kernel>_frame`` twin takes.

A flat-ABI kernel ``<prefix>_<f32|f64>[_parallel](pptr, gptr, *state, offs, chunks, work, scal, hyp,
words, steps, check)`` has a twin that takes the same arguments packed as each array's data address
then its shape, in argument order, then ``check`` as 0 or 1.  The code generator prints the twin's
unpacking from these tables (``symopt.codegen.render``) and the runtime packs and checks frames
from them (``symopt.runtime.layout.kernel_frame``), so both read one description.

Each entry: (argument name, NumPy dtype name, dimensions, written by the kernel).  The state buffers
sit between ``FRAME_HEAD`` and ``FRAME_TAIL``: 1-D, the param dtype, written.
"""

FRAME_HEAD = (("pptr", "int64", 1, False), ("gptr", "int64", 1, False))
FRAME_TAIL = (("offs", "int64", 1, False), ("chunks", "int64", 2, False), ("work", "int64", 1, False),
              ("scal", "float64", 2, True), ("hyp", "float64", 2, True), ("words", "int64", 2, False),
              ("steps", "int64", 1, True))


def frame_arrays(dtype: str, nstate: int) -> tuple:
    """Every array of the frame of a kernel of float ``dtype`` (a dtype name) with ``nstate`` state buffers."""
    return (*FRAME_HEAD, *((f"state {i}", dtype, 1, True) for i in range(nstate)), *FRAME_TAIL)
