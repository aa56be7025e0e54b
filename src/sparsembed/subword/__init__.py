"""Subword vectors, fastText's model: a word is its own row plus the rows of its character n-grams.

What ``subword`` owns: fastText's n-grams and hash (so buckets match fastText's and gensim's), the map from
each vocabulary word to its input rows and from stored rows to buckets, the compiled CBOW / skip-gram jobs over
those rows, vectors for words outside the vocabulary, and what a fastText model file needs. The model stays
:class:`sparsembed.Word2Vec` (``subwords=(3, 6)``, ``sparsembed train --subwords 3-6``); its training loop, the
data-parallel trainer and checkpoints drive these pieces through ``Word2Vec.run_job`` like word2vec's kernels.
Modules:

* :mod:`~sparsembed.subword.ngrams`: fastText's ``computeSubwords`` and ``hash`` (FNV-1a over sign-extended
  bytes), compiled over a whole vocabulary as CSR arrays; ``--subwords`` parsing;
* :mod:`~sparsembed.subword.index`: ``SubwordIndex``: each word's input rows (its own first), and the used
  buckets' compact rows after the word rows (``bucket_of_row``, in the order the vocabulary first uses them);
  unused buckets keep their initial values;
* :mod:`~sparsembed.subword.kernels`: the compiled training jobs with fastText's arithmetic (no GIL, touched-row
  marks), initial rows and the mean of a word's rows;
* :mod:`~sparsembed.subword.batched`: CBOW and skip-gram with each sentence position's rows summed once and
  updated once (the default; ``kernel="exact"`` keeps fastText's arithmetic);
* :mod:`~sparsembed.subword.vectors`: ``SubwordVectors``: composed word vectors, and vectors for unknown words;
* :mod:`~sparsembed.subword.parts`: ``SubwordParts``, everything a fastText ``.bin`` file holds
  (``Word2Vec.fasttext_parts()``);
* :mod:`~sparsembed.subword.fasttext_bin`: fastText's ``.bin`` format, written and read.
"""
