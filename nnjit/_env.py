"""Thread-pool settings that must be in the environment before the runtimes load.

nnjit alternates Numba kernels (OpenMP threads) with numpy GEMMs (OpenBLAS
threads). Both pools busy-wait after their work by default; on 2 cores each
then steals the cores the other needs next. Measured on the cnn training step
at batch 64: 21 ms with the defaults, 15 ms with both waits short.

- OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep between kernels (Numba loads
  the OpenMP runtime at its first parallel launch, after this runs).
- OPENBLAS_THREAD_TIMEOUT=4: OpenBLAS threads stop spinning after 2^4 cycles.
  OpenBLAS reads it when it loads, i.e. when numpy is first imported, so it
  only takes effect when nnjit is imported before numpy (the scripts do).

A value the user has set wins; ``SET_BY_NNJIT`` lists the ones nnjit set.
"""
import os

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
SET_BY_NNJIT = tuple(k for k in DEFAULTS if k not in os.environ)
for _key in SET_BY_NNJIT:
    os.environ[_key] = DEFAULTS[_key]
