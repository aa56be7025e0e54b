"""word2vec (CBOW and skip-gram with negative sampling), gensim-compatible, compiled, resumable.

What ``word2vec`` owns: reading a corpus into token ids, the vocabulary, the compiled training kernels, the
schedule of a run, the model and its checkpoints, the trained vectors, their evaluations and file formats. The
model is :class:`sparsembed.Word2Vec`. Modules, in the order a training run uses them:

* :mod:`~sparsembed.word2vec.corpus`: files and token lists in, checked and cut into pieces; ``scan_corpus``,
  ``build_vocab``, ``encode_corpus`` and the ``EncodedCorpus`` they give;
* :mod:`~sparsembed.word2vec.tokenizer`: the compiled tokenizer (hashing word table, token ids in a spool file);
* :mod:`~sparsembed.word2vec.vocab`: ``Vocab``: gensim's row order, subsampling thresholds, the noise table;
* :mod:`~sparsembed.word2vec.settings`: ``Settings``: the hyper-parameters, gensim's defaults, their checks;
* :mod:`~sparsembed.word2vec.schedule`: job boundaries, ``Position``, the learning-rate ``Schedule``;
* :mod:`~sparsembed.word2vec.kernels`: the compiled CBOW / skip-gram job (no GIL, marks the rows it touches);
* :mod:`~sparsembed.word2vec.model`: ``Word2Vec``: settings, the single-process job loop, the public steps of a
  training loop (which the data-parallel trainer drives too), save and resume;
* :mod:`~sparsembed.word2vec.checkpoint`: training state on disk, atomic and checksummed;
* :mod:`~sparsembed.word2vec.progress`: the progress bar and ``metrics.jsonl``;
* :mod:`~sparsembed.word2vec.vectors`: ``Vectors``: lookup, ``most_similar``, files;
* :mod:`~sparsembed.word2vec.evaluate`: analogy and word-pair evaluations with gensim's answers;
* :mod:`~sparsembed.word2vec.formats`: word2vec binary / text, fvocab and npy files;
* :mod:`~sparsembed.word2vec.report`: PNG plots of a run's metrics;
* :mod:`~sparsembed.word2vec.planted`: a generated corpus with planted analogies and its questions;
* :mod:`~sparsembed.word2vec.demo`: ``sparsembed demo``: train on it, show and keep what was learned.
"""
