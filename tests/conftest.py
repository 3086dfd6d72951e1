"""Shared test set-up.

The test models are tiny: one thread is faster than two for them, and with one thread the
in-process runs and the subprocess runs (which inherit OMP_NUM_THREADS) do their arithmetic in
the same order, which the exact-resume tests rely on. For the same reason the in-process runs
get portable numerics, as the scripts started from the command line do: without the pin, an
AVX-512 machine would run AVX-512 kernels in-process and AVX2 kernels in the subprocesses.
"""
import os

from running import numerics

os.environ["OMP_NUM_THREADS"] = "1"
numerics.pin_before_torch([])

import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(1)
