#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one command: the tests marked `cuda` (tests/test_backends.py:
# the torch backend eager, compiled by Inductor/Triton, and torch.optim parity on the device) and
# the device benchmark (benchmarks/bench_devices.py).
#
#   bash benchmarks/gpu_check.sh [OUTDIR]        # default OUTDIR: benchmarks/out
#
# Python is $PYTHON, else .venv/bin/python where `make test` made it, else python3.  On a machine
# with no package index, wheels put in .whl/ (symopt's own, `pip wheel --no-deps -w .whl .`, and the
# pinned packages the machine lacks) are installed into a private folder first.  Writes
# gpu_versions.txt, gpu_tests.txt and gpu_bench.txt into OUTDIR; the exit status is the tests'.
set -u
out=${1:-${OUT:-benchmarks/out}}
mkdir -p "$out"
py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d)
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 1
  # the wheel must be this tree's symopt: a stale one would test other kernels than the ones here
  if ! { diff -rq -x __pycache__ -x generated -x templates symopt "$site/symopt" &&
         diff -rq -x __pycache__ generated "$site/symopt/generated" &&
         diff -rq -x __pycache__ templates "$site/symopt/templates"; }; then
    echo "gpu_check: the symopt wheel in .whl/ differs from this tree; build it again (pip wheel --no-deps -w .whl .)" >&2
    exit 1
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# JAX would take 75% of the GPU's memory in every test worker; the cuda tests are torch's.
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
# -P (Python 3.11+): import symopt as installed (its kernels as symopt.generated), not the source folder here.
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$py" -P -c "import sys, numba, numpy, sympy, torch, symopt
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda available', torch.cuda.is_available(),
      'numba', numba.__version__, 'numpy', numpy.__version__, 'sympy', sympy.__version__, 'symopt from', symopt.__file__)"
} 2>&1 | tee "$out/gpu_versions.txt"
workers=()
if "$py" -c "import xdist" 2>/dev/null; then
  workers=(-n "${GPU_CHECK_WORKERS:-8}")
fi
JAX_PLATFORMS=cpu TORCHINDUCTOR_COMPILE_THREADS=1 timeout "${GPU_TEST_TIMEOUT:-300}" \
  "$py" -P -m pytest -q -p no:cacheprovider -m cuda "${workers[@]}" tests/test_backends.py 2>&1 | tee "$out/gpu_tests.txt"
status=${PIPESTATUS[0]}
timeout "${GPU_BENCH_TIMEOUT:-270}" "$py" -P benchmarks/bench_devices.py --device cuda --sizes 1e6,1e7,1e8 \
  --rounds 15 2>&1 | tee "$out/gpu_bench.txt"
exit "$status"
