"""Without a CUDA device, Triton's kernels (:mod:`sparsembed.gpu`) run through its CPU interpreter: set before any
test imports them, and inherited by the commands the CLI tests start."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
