"""Compression of a message's row-id section: zstd or lz4, kept only where it makes the section smaller.

Row ids coded by :mod:`sparsembed.rows.rowsets` are already close to their information bound, so compression
rarely pays; when it does (long runs, regular strides) :func:`compress` keeps it, and the codec's header records
the method (:data:`CODES`) and the uncompressed length. :func:`decompress` refuses a section that would expand by
more than :data:`MAX_EXPANSION` (a compression bomb), or whose frame disagrees with the header.
"""

from __future__ import annotations

__all__ = ["CODES", "METHODS", "MAX_EXPANSION", "CompressError", "compress", "decompress"]

#: Wire code of each method (``None``: stored plain).
CODES = {None: 0, "zstd": 1, "lz4": 2}
#: Method of each wire code.
METHODS = {code: method for method, code in CODES.items()}
#: The most a compressed id section may expand: a larger claim is refused before anything is allocated.
MAX_EXPANSION = 256


class CompressError(ValueError):
    """A compressed section that cannot be expanded; the text says why."""


def compress(raw: bytes, method: str | None) -> tuple[bytes, str | None]:
    """``raw`` compressed by ``method`` and the method, or ``raw`` itself and ``None`` when that is not smaller
    (or would expand by more than :data:`MAX_EXPANSION` on reading)."""
    if method is None or not raw:
        return raw, None
    if method == "zstd":
        import zstandard

        out = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(raw)
    else:
        import lz4.block

        out = lz4.block.compress(raw, store_size=False)
    if len(out) >= len(raw) or len(raw) > MAX_EXPANSION * len(out) + 4096:
        return raw, None
    return out, method


def decompress(data: memoryview, method: str | None, raw_len: int) -> bytes | memoryview:
    """The ``raw_len`` bytes ``data`` holds compressed by ``method`` (``data`` itself when ``None``).

    Raises:
        CompressError: a corrupt frame, or one that does not expand to ``raw_len`` bytes.
    """
    if method is None:
        return data
    try:
        if method == "zstd":
            import zstandard

            if zstandard.frame_content_size(data) != raw_len:
                raise CompressError("zstd frame size disagrees with the header")
            out = zstandard.ZstdDecompressor().decompress(data, max_output_size=raw_len)
        else:
            import lz4.block

            out = lz4.block.decompress(data, uncompressed_size=raw_len)
    except CompressError:
        raise
    except Exception as e:  # zstd / lz4 raise their own types on corrupt frames
        raise CompressError(f"corrupt {method} id section ({e})") from None
    if len(out) != raw_len:
        raise CompressError(f"{method} id section gave {len(out)} bytes, header says {raw_len}")
    return out
