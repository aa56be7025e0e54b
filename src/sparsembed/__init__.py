"""sparsembed: train embedding matrices, sending only the rows a step touched.

The public API is this package's names (``dir(sparsembed)``); each comes from the package that owns it:

* :mod:`sparsembed.rows`: row-sparse gradients coalesced in place, row sets (index, bitmap, roaring), the wire
  codec and its compression, the key table of hash-stored rows;
* :mod:`sparsembed.comm`: the sparse-or-dense policy, transports (gloo, shared memory), replicated and sharded
  exchange, Zipf-aware shard maps;
* :mod:`sparsembed.word2vec`: corpus reading, vocabulary, compiled kernels, schedule, the trainer, the vectors
  and their file formats;
* :mod:`sparsembed.subword`: fastText's model: character n-grams and their hash, the words' input rows, the
  compiled jobs over them, vectors for unseen words, the parts of a fastText file;
* :mod:`sparsembed.dataparallel`: the data-parallel word2vec trainer, its launcher and watchdog;
* :mod:`sparsembed.nn`: any PyTorch model: the three parameter families, ``HashEmbedding``, ``parallel``, optimizers;
* :mod:`sparsembed.bench`: the exchange benchmark behind ``sparsembed bench exchange``.

Heavy modules (numba kernels, torch) load on first use, so ``import sparsembed`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Word2Vec": ("sparsembed.word2vec.model", "Word2Vec"),
    "Vectors": ("sparsembed.word2vec.vectors", "Vectors"),
    "UserError": ("sparsembed.errors", "UserError"),
    "parallel": ("sparsembed.nn.parallel", "parallel"),
    "ParallelModel": ("sparsembed.nn.parallel", "ParallelModel"),
    "HashEmbedding": ("sparsembed.nn.hashembedding", "HashEmbedding"),
    "RowSparse": ("sparsembed.rows.coalesce", "RowSparse"),
    "optim": ("sparsembed.nn.optim", None),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = importlib.import_module(module)
        return value if attr is None else getattr(value, attr)
    raise AttributeError(f"module 'sparsembed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*_LAZY, "__version__"])


__all__ = sorted(_LAZY)
