"""sparsembed: train embedding matrices, sending only the rows a step touched.

Heavy modules (numba kernels, torch exchange) load on first use, so ``import sparsembed`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Word2Vec": ("sparsembed.word2vec", "Word2Vec"),
    "Vectors": ("sparsembed.vectors", "Vectors"),
    "UserError": ("sparsembed.errors", "UserError"),
    "parallel": ("sparsembed.parallel", "parallel"),
    "HashEmbedding": ("sparsembed.hashembedding", "HashEmbedding"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'sparsembed' has no attribute {name!r}")


__all__ = sorted(_LAZY)
