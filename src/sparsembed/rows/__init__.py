"""rows: a few rows of a huge matrix, as a step produces them and as they travel.

What ``rows`` owns: the row-sparse gradient and its coalescing in place (:mod:`~sparsembed.rows.coalesce`), how a
message says which rows it holds (:mod:`~sparsembed.rows.rowsets`: index array, complement, bitmap, roaring,
whichever is smallest at that density), the wire value types (:mod:`~sparsembed.rows.values`; int8 rows with a
scale each, :mod:`~sparsembed.rows.quantize`), the checked wire
format of a block of rows (:mod:`~sparsembed.rows.codec`) and the compression of its ids
(:mod:`~sparsembed.rows.compress`), and hash-stored rows created on first touch (:mod:`~sparsembed.rows.keytable`).
Nothing here talks to other processes: that is :mod:`sparsembed.comm`.
"""
