"""A word2vec model's training state on a CUDA device, and the training of one job there.

:class:`DeviceTrainer` holds on the device what a job reads and writes: both matrices, the corpus' token ids (all
of them, uploaded once), the sentence starts, the subsampling thresholds and the noise alias table. A job (the same
sentence range as on the CPU, :mod:`sparsembed.word2vec.schedule`) is prepared with torch ops: subsampled by a
hash of (run key, token position), compacted, and given each kept token's sentence bounds; then one launch of a
kernel of :mod:`sparsembed.gpu.kernels` trains it. The model's host matrices stay the record for checkpoints and
outputs: :meth:`DeviceTrainer.pull` copies the device rows into them.

Under Triton's interpreter (``TRITON_INTERPRET=1``, how CI runs without a GPU) the same code runs on CPU tensors.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch

from sparsembed.errors import UserError

__all__ = ["DEVICE_JOB_TOKENS", "DEFAULT_CHUNK", "DeviceTrainer", "check_device", "interpreting", "run_key",
           "subsample_draws"]

#: Tokens per job on a device when the user set none: a launch must hold enough programs to fill the GPU, and
#: each job costs one synchronisation (its loss) and a little preparation.
DEVICE_JOB_TOKENS = 1 << 22
#: Kept tokens each program trains one after another (the launch has ``kept / chunk`` programs), and the warps of
#: a program: the launch shape, read when a trainer is made (``benchmarks/bench_gpu.py`` sweeps them).
DEFAULT_CHUNK = 64
NUM_WARPS = 4
_U32 = 0xFFFFFFFF
#: The hash stream of a run key (see :func:`run_key`), apart from the CPU generators' streams.
_KEY_STREAM = 0x6B1D


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_device(device: str) -> torch.device:
    """The torch device that ``--device`` names (``cuda`` or ``cuda:N``), or UserError saying why it cannot train
    there. Under Triton's interpreter, CPU tensors stand in for the device."""
    try:
        import triton  # noqa: F401
    except ImportError:
        raise UserError(f"--device {device} needs Triton (pip install 'sparsembed[gpu]', or triton beside a CUDA "
                        "build of torch); or train on the CPU with --device cpu") from None
    if interpreting():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is visible to torch {torch.__version__} "
                        f"(torch.cuda.is_available() is False); train on the CPU with --device cpu")
    target = torch.device(device)
    if target.index is not None and target.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                        f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return target


def run_key(seed: int, epoch: int) -> int:
    """The 31-bit key of every draw in epoch ``epoch`` of a run seeded ``seed``."""
    from sparsembed.word2vec.kernels import job_seed

    return int(job_seed(seed, epoch, _KEY_STREAM)) & 0x7FFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """:func:`sparsembed.gpu.kernels.mix32` on int64 tensors holding uint32 values (products wrap; the low 32
    bits are exact)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _U32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _U32
    return x ^ (x >> 16)


def subsample_draws(key: int, positions: torch.Tensor, stream: int) -> torch.Tensor:
    """The kernels' ``_draw(key, position, stream)`` for int64 ``positions``: uint32 values in int64."""
    return _mix32((_mix32((positions & _U32) ^ key) + stream * 0x9E3779B9) & _U32)


@dataclass
class PreparedJob:
    """A job's kept tokens, their corpus positions and their sentences' kept bounds, on the device."""

    tokens: torch.Tensor
    positions: torch.Tensor
    lows: torch.Tensor
    highs: torch.Tensor

    @property
    def n(self) -> int:
        """Kept tokens."""
        return int(self.tokens.shape[0])


class DeviceTrainer:
    """Both matrices, the corpus and the tables of a model on ``device``; trains jobs in place there.

    Args:
        syn0, syn1: the model's matrices (copied to the device).
        ids, sentence_starts: the encoded corpus (:class:`~sparsembed.word2vec.corpus.EncodedCorpus`).
        sample_ints: per-row subsampling thresholds (keep a token when its draw is at most its row's), or None.
        alias_threshold, alias_row: the noise distribution's Walker alias table (:meth:`Vocab.noise_alias`).
        device: where to train (:func:`check_device`).
        chunk: kept tokens per program (default :data:`DEFAULT_CHUNK`).
    """

    def __init__(self, syn0: np.ndarray, syn1: np.ndarray, ids: np.ndarray, sentence_starts: np.ndarray,
                 sample_ints: np.ndarray | None, alias_threshold: np.ndarray, alias_row: np.ndarray,
                 device: torch.device, chunk: int | None = None) -> None:
        self.device = device
        self.chunk = DEFAULT_CHUNK if chunk is None else int(chunk)
        self.num_warps = NUM_WARPS
        self.syn0 = torch.from_numpy(np.ascontiguousarray(syn0, np.float32)).to(device, copy=True)
        self.syn1 = torch.from_numpy(np.ascontiguousarray(syn1, np.float32)).to(device, copy=True)
        self.ids = torch.from_numpy(np.array(ids, dtype=np.int32)).to(device)  # a copy: ids may be a read-only map
        self.starts = torch.from_numpy(np.ascontiguousarray(sentence_starts, np.int64)).to(device)
        self.sample = (None if sample_ints is None
                       else torch.from_numpy(np.asarray(sample_ints, np.int64)).to(device))
        self.alias_threshold = torch.from_numpy(np.asarray(alias_threshold, np.int64)).to(device)
        self.alias_row = torch.from_numpy(np.asarray(alias_row, np.int32)).to(device)

    def prepare(self, key: int, first_token: int, last_token: int) -> PreparedJob:
        """Tokens ``[first_token, last_token)`` (whole sentences) subsampled and compacted, with each kept token's
        sentence bounds in kept positions."""
        tokens = self.ids[first_token:last_token]
        positions = torch.arange(first_token, last_token, device=self.device, dtype=torch.int64)
        if self.sample is not None:
            from sparsembed.gpu.kernels import HASH_STREAM_SUBSAMPLE

            keep = subsample_draws(key, positions, HASH_STREAM_SUBSAMPLE) <= self.sample[tokens.long()]
            tokens, positions = tokens[keep], positions[keep]
        sentence = torch.searchsorted(self.starts, positions, right=True)
        _, counts = torch.unique_consecutive(sentence, return_counts=True)
        ends = torch.cumsum(counts, 0)
        lows = torch.repeat_interleave((ends - counts).to(torch.int32), counts)
        highs = torch.repeat_interleave(ends.to(torch.int32), counts)
        return PreparedJob(tokens.contiguous(), positions, lows, highs)

    def train_job(self, sg: int, window: int, negative: int, alpha: float, min_alpha: float, total_tokens: int,
                  tokens_before: int, seed: int, epoch: int, first_token: int, last_token: int,
                  ) -> tuple[float, int, int]:
        """Train tokens ``[first_token, last_token)`` of epoch ``epoch``; return (loss, pairs, trained words), as
        the CPU kernels do. The learning rate falls linearly with the token's place in the run
        (``tokens_before + offset`` of ``total_tokens``)."""
        import triton

        from sparsembed.gpu import kernels

        key = run_key(seed, epoch)
        job = self.prepare(key, first_token, last_token)
        if job.n == 0:
            return 0.0, 0, 0
        programs = triton.cdiv(job.n, self.chunk)
        loss = torch.zeros(programs, dtype=torch.float32, device=self.device)
        pairs = torch.zeros(programs, dtype=torch.int32, device=self.device)
        dim = self.syn0.shape[1]
        kernel = kernels.skipgram_kernel if sg else kernels.cbow_kernel
        # tl.dot (skip-gram) needs every block side >= 16
        least = 16 if sg else 1
        # Triton launches on the thread's current CUDA device
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            kernel[(programs,)](
                self.syn0, self.syn1, job.tokens, job.positions, job.lows, job.highs, job.n, self.chunk, key, window,
                self.syn1.shape[0], self.alias_threshold, self.alias_row, float(alpha), float(min_alpha),
                float(alpha - min_alpha) / max(total_tokens, 1), float(tokens_before), first_token, loss, pairs,
                DIM=dim, NEG=negative, BD=max(16, triton.next_power_of_2(dim)),
                BW=max(least, triton.next_power_of_2(2 * window + 1)),
                BN=max(least, triton.next_power_of_2(negative + 1)), num_warps=self.num_warps,
            )
        return float(loss.double().sum().item()), int(pairs.sum().item()), job.n

    def pull(self, syn0: np.ndarray, syn1: np.ndarray) -> None:
        """Copy the device's matrices into the host arrays ``syn0`` and ``syn1`` (in place)."""
        syn0[...] = self.syn0.cpu().numpy()
        syn1[...] = self.syn1.cpu().numpy()
