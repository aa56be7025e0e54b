"""sparsembed.nn.feedback.Residual: what rounding dropped, kept per row and sent with the row's next gradient."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsembed.comm.messages import as_wire
from sparsembed.nn.feedback import Residual

ROWS, DIM = 30, 3


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.sampled_from(["round1", "int8", "fp16"]))
def test_sent_plus_pending_is_every_gradient(seed: int, steps: int, rounding: str) -> None:
    """Any sequence of sparse gradients: the rows as the peers decode them, summed, plus what is pending, equal the
    gradients summed; the store stays sorted, distinct and free of zero rows."""
    rng = np.random.default_rng(seed)
    residual = Residual(DIM)
    total = np.zeros((ROWS, DIM))
    wired = np.zeros((ROWS, DIM))
    for _ in range(steps):
        ids = torch.from_numpy(np.sort(rng.choice(ROWS, rng.integers(0, ROWS), replace=False)))
        vals = torch.from_numpy(rng.standard_normal((ids.shape[0], DIM)).astype(np.float32))
        total[ids.numpy()] += vals.numpy()
        sent = residual.take(ids, vals)
        assert not np.isin(residual.ids.numpy(), ids.numpy()).any()  # taken rows left the store
        wire = torch.round(sent, decimals=1) if rounding == "round1" else as_wire(sent, rounding)
        residual.keep(ids, sent - wire)
        wired[ids.numpy()] += wire.numpy()
        pending = residual.ids.numpy()
        assert np.all(np.diff(pending) > 0) and bool(torch.all(torch.any(residual.values != 0, dim=1)))
    kept = np.zeros((ROWS, DIM))
    kept[residual.ids.numpy()] = residual.values.numpy()
    np.testing.assert_allclose(wired + kept, total, rtol=0, atol=1e-5)
    ids, values = residual.pop_all()
    assert len(residual) == 0 and ids.shape[0] == values.shape[0]
