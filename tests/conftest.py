"""Shared test set-up.

The test models are tiny: one thread is faster than two for them, and with one thread the
in-process runs and the subprocess runs (which inherit OMP_NUM_THREADS) do their arithmetic in
the same order, which the exact-resume tests rely on.
"""
import os

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(1)
