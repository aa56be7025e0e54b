"""Sparsity-aware data parallelism for any PyTorch model.

What ``nn`` owns: the three parameter families (hashed: hash-stored, sparse-sent; sparse: dense-stored,
sparse-sent; dense), the ``HashEmbedding`` module of the hashed family, ``parallel`` (the DDP replacement that
exchanges each family its own way) and optimizers that update only the rows a step touched. Modules:

* :mod:`~sparsembed.nn.families`: ``Family``, ``families(module)`` (the one classification) and the standalone
  per-family types ``SparseParam`` / ``RowSparseParam`` / ``DenseParam``;
* :mod:`~sparsembed.nn.hashembedding`: ``HashEmbedding``, an embedding over arbitrary int64 ids;
* :mod:`~sparsembed.nn.parallel`: ``parallel`` / ``ParallelModel`` and ``sync``;
* :mod:`~sparsembed.nn.feedback`: ``Residual``, what a rank's rounded rows dropped, sent with their next gradient;
* :mod:`~sparsembed.nn.optim`: ``SGD``, ``Adagrad`` and a lazy ``Adam`` over the three families.
"""
