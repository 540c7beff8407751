"""Threads of the generated kernels: how many, and from which size they are used.

An optimizer step runs the serial kernel when the elements it updates number
fewer than ``Optimizer.parallel_threshold`` (default
:data:`symopt.runtime.optimizer.PARALLEL_THRESHOLD_BYTES` over the itemsize, measured by
``symopt bench``),
and the threaded kernel -- one contiguous stretch of memory per thread -- from
there on, when more than one thread is allowed.

The count is numba's: :func:`set_num_threads` calls ``numba.set_num_threads``,
which applies to parallel regions launched from the calling thread, and cannot
exceed ``NUMBA_NUM_THREADS`` (fixed when numba starts; default: the number of
cores).
"""

from __future__ import annotations

import numba
from numba.np.ufunc import parallel as _parallel

_read_count = None  # the threading layer's own reader of the calling thread's count, once the pool runs


def get_num_threads() -> int:
    """Threads a threaded step uses when called from this thread."""
    return numba.get_num_threads()


def current() -> int:
    """:func:`get_num_threads` for the step itself: ~0.1 µs instead of ~1.5 µs.

    ``numba.get_num_threads`` starts the thread pool if needed (under a lock) and then asks the
    threading layer; after the first call this asks the layer directly (the same thread-local
    count that ``numba.set_num_threads`` writes).
    """
    global _read_count
    if _read_count is None:
        n = numba.get_num_threads()  # starts the pool; binds the layer's functions
        _read_count = getattr(_parallel, "_get_num_threads", None) or numba.get_num_threads
        return n
    return _read_count()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (1 <= n <= NUMBA_NUM_THREADS) for steps called from this thread."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"number of threads must be an int, got {type(n).__name__}")
    top = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= top:
        raise ValueError(f"number of threads must be between 1 and {top} (NUMBA_NUM_THREADS), got {n}")
    numba.set_num_threads(n)


def max_threads() -> int:
    """The most threads :func:`set_num_threads` accepts (``NUMBA_NUM_THREADS``)."""
    return numba.config.NUMBA_NUM_THREADS
