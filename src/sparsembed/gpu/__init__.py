"""word2vec on a CUDA device (``sparsembed train --device cuda``, ``Word2Vec(..., device="cuda")``).

What ``gpu`` owns: the Triton kernels of CBOW and skip-gram (:mod:`~sparsembed.gpu.kernels`) and the device copy of
a model's training state, which trains one job at a time (:mod:`~sparsembed.gpu.engine`). The model, its schedule,
checkpoints and outputs are :mod:`sparsembed.word2vec`'s, unchanged: a job on the device takes the place of a job
of the CPU kernels. The sparse exchange on CUDA tensors is :mod:`sparsembed.comm`'s.
"""
