"""Wire format: round trips for every encoding x dtype x compression, sizes, and fuzzed malformed input."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsembed.errors import UserError
from sparsembed.rows import codec, rowsets
from sparsembed.rows.coalesce import RowSparse

ROWS = ["auto", "index", "complement", "bitmap", "roaring", "all"]
VALUES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPRESS = [None, "zstd", "lz4"]


@st.composite
def row_sets(draw, max_rows=3000):
    num_rows = draw(st.integers(0, max_rows))
    density = draw(st.sampled_from([0.0, 0.001, 0.02, 0.2, 0.5, 0.8, 0.99, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):  # clustered, like frequency-ordered Zipf rows
        ids = np.unique(np.minimum(rng.zipf(1.2, int(num_rows * density) + 1) - 1, num_rows - 1))
        ids = ids[ids >= 0]
    else:
        ids = np.sort(rng.choice(num_rows, int(num_rows * density), replace=False))
    return ids.astype(np.int64), num_rows


def _message(ids, num_rows, dim=3, **kw):
    values = torch.randn(ids.shape[0], dim)
    return codec.encode(RowSparse(torch.from_numpy(ids), values, num_rows), **kw), values


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row_sets(), st.sampled_from(ROWS), st.sampled_from(list(VALUES)), st.sampled_from(COMPRESS))
def test_round_trip(row_set, rows, values, compress):
    ids, num_rows = row_set
    if rows == "all":
        ids = np.arange(num_rows, dtype=np.int64)
    buf, vals = _message(ids, num_rows, rows=rows, values=values, compress=compress)
    assert bytes(codec.encode_array(RowSparse(torch.from_numpy(ids), vals, num_rows), rows, values, compress)) == buf
    out = codec.decode(buf)
    assert torch.equal(out.ids, torch.from_numpy(ids)) and out.num_rows == num_rows
    assert out.values.dtype == torch.float32
    assert torch.equal(out.values, vals.to(VALUES[values]).float())
    wire = codec.decode(bytearray(buf), dtype="wire")
    assert wire.values.dtype == VALUES[values]
    head = codec.header(buf)
    assert head["rows"] == (rowsets.choose(ids, num_rows).name if rows == "auto" else rows)
    assert len(buf) == codec.HEADER_SIZE + head["id_len"] + ids.shape[0] * 3 * (4 if values == "fp32" else 2)


@settings(max_examples=300, deadline=None)
@given(row_sets(max_rows=100_000))
def test_sizes_exact_and_auto_smallest(row_set):
    ids, num_rows = row_set
    sizes = rowsets.candidate_sizes(ids, num_rows)
    for name, size in sizes.items():
        enc = rowsets.get(name)
        buf = enc.encode(ids, num_rows)
        assert len(buf) == size == enc.size(ids, num_rows)
        assert np.array_equal(enc.decode(buf, ids.shape[0], num_rows), ids)
    assert rowsets.choose(ids, num_rows).name == min(sizes, key=lambda k: (sizes[k], k != "all"))


@pytest.mark.parametrize("density", [1e-5, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.7, 0.99, 1.0])
def test_auto_near_information_bound(density):
    num_rows = 200_000
    n = max(1, round(num_rows * density))
    ids = np.sort(np.random.default_rng(0).choice(num_rows, n, replace=False)).astype(np.int64)
    bits = (math.lgamma(num_rows + 1) - math.lgamma(n + 1) - math.lgamma(num_rows - n + 1)) / math.log(2)
    bound = math.ceil(bits - 1e-9) / 8
    assert min(rowsets.candidate_sizes(ids, num_rows).values()) <= 1.15 * bound + 64 - codec.HEADER_SIZE


def test_uncoalesced_input_is_coalesced_copy():
    rs = RowSparse(torch.tensor([4, 1, 4]), torch.ones(3, 2), 5)
    out = codec.decode(codec.encode(rs))
    assert out.ids.tolist() == [1, 4] and out.values[:, 0].tolist() == [1.0, 2.0]
    assert rs.ids.tolist() == [4, 1, 4]


def test_zero_copy_only_for_writable_buffers():
    buf = codec.encode_array(RowSparse(torch.tensor([1]), torch.ones(1, 4), 3))
    codec.decode(buf).values[0, 0] = 7
    assert buf[-16:].view(np.float32)[0] == 7  # a view of buf
    frozen = bytes(codec.encode_array(RowSparse(torch.tensor([1]), torch.ones(1, 4), 3)))
    codec.decode(frozen).values[0, 0] = 9  # a copy: bytes stay immutable
    assert codec.decode(frozen).values[0, 0] == 1


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"rows": "nope"}, "rows"),
        ({"values": "fp64"}, "values"),
        ({"compress": "gzip"}, "compress"),
        ({"rows": "all"}, "all"),
    ],
)
def test_encode_rejects_bad_options(kw, match):
    with pytest.raises(UserError, match=match):
        codec.encode(RowSparse(torch.tensor([1]), torch.ones(1, 2), 3), **kw)


# -- malformed input ----------------------------------------------------------------------------------------------
def _reseal(buf: bytearray) -> bytes:
    """Recompute the checksum of a tampered message, so checks behind it are exercised."""
    fields = list(struct.unpack_from("<4sBBBBQQIIQQQ", buf))
    start = codec.HEADER_SIZE + fields[9]
    seed = codec._checksum(
        bytes(buf[start:]), codec._checksum(bytes(buf[codec.HEADER_SIZE : start]), codec._checksum(bytes(buf[:48]), 0))
    )
    buf[48:56] = struct.pack("<Q", seed)
    return bytes(buf)


def _decode_fails_cleanly(buf, match=None):
    with pytest.raises(codec.CodecError, match=match):
        codec.decode(buf)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_rejected(data):
    _decode_fails_cleanly(data)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_behind_valid_magic_rejected(data):
    _decode_fails_cleanly(b"SPRW\x01" + data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row_sets(max_rows=500), st.sampled_from(ROWS[:5]), st.sampled_from(COMPRESS), st.data())
def test_corrupted_messages_rejected(row_set, rows, compress, data):
    ids, num_rows = row_set
    buf = bytearray(_message(ids, num_rows, rows=rows, compress=compress)[0])
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "byte"]))
    if how == "flip":
        pos = data.draw(st.integers(0, 8 * len(buf) - 1))
        buf[pos // 8] ^= 1 << (pos % 8)
    elif how == "truncate":
        del buf[data.draw(st.integers(0, len(buf) - 1)) :]
    elif how == "extend":
        buf += data.draw(st.binary(min_size=1, max_size=9))
    else:
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = (buf[pos] + data.draw(st.integers(1, 255))) % 256
    _decode_fails_cleanly(bytes(buf))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row_sets(max_rows=500), st.sampled_from(ROWS[1:5]), st.data())
def test_resealed_tampering_rejected_or_valid(row_set, rows, data):
    """With a correct checksum, tampered ids must still be either rejected or decode to a valid set."""
    ids, num_rows = row_set
    buf = bytearray(_message(ids, num_rows, rows=rows)[0])
    head = codec.header(buf)
    lo, hi = codec.HEADER_SIZE, codec.HEADER_SIZE + head["id_len"]
    if hi > lo:
        pos = data.draw(st.integers(lo, hi - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    try:
        out = codec.decode(_reseal(buf))
    except codec.CodecError:
        return
    got = out.ids.numpy()
    assert got.shape[0] == ids.shape[0] and np.all(np.diff(got) > 0)
    assert got.shape[0] == 0 or (got[0] >= 0 and got[-1] < num_rows)


def _tamper_header(field: int, value) -> bytes:
    buf = bytearray(_message(np.array([1, 5, 9], np.int64), 20, rows="index")[0])
    fields = list(struct.unpack_from("<4sBBBBQQIIQQQ", buf))
    fields[field] = value
    struct.pack_into("<4sBBBBQQIIQQQ", buf, 0, *fields)
    return _reseal(buf)


@pytest.mark.parametrize(
    "field, value, match",
    [
        (0, b"XXXX", "magic"),
        (1, 2, "version"),
        (2, 9, "encoding"),
        (3, 7, "dtype"),
        (4, 5, "compression"),
        (5, 1 << 60, "num_rows"),
        (5, 2, "n="),
        (6, 1 << 40, "n="),
        (7, 0, "dim"),
        (7, 1 << 30, "dim"),
        (8, 1, "reserved"),
        (9, 1 << 50, "sizes do not add up"),
        (10, 99, "claims"),
    ],
)
def test_header_fields_checked(field, value, match):
    _decode_fails_cleanly(_tamper_header(field, value), match=match)


def test_checksum_mismatch_named():
    buf = bytearray(_message(np.array([1, 5], np.int64), 20)[0])
    buf[-1] ^= 0xFF
    _decode_fails_cleanly(bytes(buf), match="checksum")


@pytest.mark.parametrize("rows", ["index", "bitmap", "roaring", "complement"])
def test_unsorted_duplicate_out_of_range_ids_rejected(rows):
    """Hand-built id sections that are well framed but describe an invalid set."""
    num_rows = 100
    good = np.array([3, 10, 70], np.int64)
    enc = rowsets.get(rows)
    for bad_num_rows in (50, 11):  # same section, fewer rows: 70 (or 10 and 70) out of range
        section = enc.encode(good, num_rows)
        with pytest.raises(rowsets.RowSetError):
            enc.decode(section, 3, bad_num_rows)
    if rows == "roaring":
        section = bytearray(enc.encode(good, num_rows))
        section[-6:] = struct.pack("<3H", 70, 10, 3)  # unsorted array container
        with pytest.raises(rowsets.RowSetError):
            enc.decode(bytes(section), 3, num_rows)
        section[-6:] = struct.pack("<3H", 3, 3, 70)  # duplicate
        with pytest.raises(rowsets.RowSetError):
            enc.decode(bytes(section), 3, num_rows)


def test_compression_bomb_refused():
    buf = bytearray(_message(np.array([1], np.int64), 10_000_000, rows="bitmap", compress="zstd")[0])
    assert codec.header(buf)["compress"] is None  # would expand > MAX_EXPANSION: stored plain
    fields = list(struct.unpack_from("<4sBBBBQQIIQQQ", buf))
    fields[4], fields[10] = 1, 1 << 40
    struct.pack_into("<4sBBBBQQIIQQQ", buf, 0, *fields)
    _decode_fails_cleanly(_reseal(buf), match="expand")


def test_encode_array_into_a_given_buffer() -> None:
    rs = RowSparse(torch.tensor([3, 7, 90]), torch.arange(12, dtype=torch.float32).reshape(3, 4), 100)
    expected = codec.encode(rs)
    slot = np.full(len(expected) + 50, 0xAB, np.uint8)
    msg = codec.encode_array(rs, out=slot)
    assert msg.tobytes() == expected and np.shares_memory(msg, slot)
    assert (slot[len(expected):] == 0xAB).all()  # nothing written past the message
    with pytest.raises(ValueError, match="at least"):
        codec.encode_array(rs, out=np.zeros(len(expected) - 1, np.uint8))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row_sets(), st.sampled_from(ROWS[:5]), st.sampled_from(list(VALUES)), st.sampled_from(COMPRESS))
def test_unchecked_message_round_trips_and_only_the_checksum_differs(row_set, rows, values, compress):
    """``checksum=False`` (shared memory): the same bytes but a zero checksum field; ``verify=False`` reads it back,
    while the default decode refuses it."""
    ids, num_rows = row_set
    rs = RowSparse(torch.from_numpy(ids), torch.randn(ids.shape[0], 3), num_rows)
    checked = codec.encode_array(rs, rows, values, compress)
    unchecked = codec.encode_array(rs, rows, values, compress, checksum=False)
    assert unchecked[48:56].tobytes() == bytes(8)
    assert unchecked[:48].tobytes() == checked[:48].tobytes() and unchecked[56:].tobytes() == checked[56:].tobytes()
    out = codec.decode(unchecked, dtype="wire", verify=False)
    ref = codec.decode(checked, dtype="wire")
    assert torch.equal(out.ids, ref.ids) and torch.equal(out.values, ref.values)
    _decode_fails_cleanly(unchecked.tobytes(), match="checksum")  # a real checksum is 0 with odds 2^-64


def test_unverified_decode_still_checks_the_structure() -> None:
    """Skipping the checksum skips nothing else: a bad header field or an out-of-range id is still refused."""
    for field, value, match in [(0, b"XXXX", "magic"), (9, 1 << 50, "sizes do not add up"), (7, 0, "dim")]:
        buf = bytearray(_message(np.array([1, 5, 9], np.int64), 20, rows="index")[0])
        fields = list(struct.unpack_from("<4sBBBBQQIIQQQ", buf))
        fields[field] = value
        struct.pack_into("<4sBBBBQQIIQQQ", buf, 0, *fields)
        with pytest.raises(codec.CodecError, match=match):
            codec.decode(bytes(buf), verify=False)
    buf = bytearray(_message(np.array([1, 5, 9], np.int64), 20, rows="index")[0])
    fields = list(struct.unpack_from("<4sBBBBQQIIQQQ", buf))
    fields[5] = 6  # 9 is out of range of 6 rows
    struct.pack_into("<4sBBBBQQIIQQQ", buf, 0, *fields)
    with pytest.raises(codec.CodecError):
        codec.decode(bytes(buf), verify=False)


# -- int8 values: a float32 scale per row, then the rows in int8 ----------------------------------------------------
@st.composite
def int8_rows(draw, max_rows=600):
    """A row set and float32 rows of very different magnitudes, some rows zero."""
    ids, num_rows = draw(row_sets(max_rows=max_rows))
    dim = draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    vals = rng.standard_normal((ids.shape[0], dim)).astype(np.float32)
    vals *= (10.0 ** rng.integers(-12, 6, (ids.shape[0], 1))).astype(np.float32)
    vals[rng.random(ids.shape[0]) < 0.1] = 0
    return ids, num_rows, torch.from_numpy(vals)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(int8_rows(), st.sampled_from(ROWS[:5]), st.sampled_from(COMPRESS))
def test_int8_round_trip_within_half_a_scale(rows_and_values, rows, compress):
    """Each value decodes within half its row's scale (``max|v| / 127``), zero rows exactly, the sender's own view
    (``as_wire``) is what peers decode, and the message is the header, the ids and ``n x (4 + dim)`` bytes."""
    from sparsembed.comm.messages import as_wire

    ids, num_rows, vals = rows_and_values
    rs = RowSparse(torch.from_numpy(ids), vals, num_rows)
    buf = codec.encode(rs, rows, "int8", compress)
    assert bytes(codec.encode_array(rs, rows, "int8", compress)) == buf
    out = codec.decode(buf)
    assert torch.equal(out.ids, torch.from_numpy(ids)) and out.values.dtype == torch.float32
    assert torch.equal(out.values, as_wire(vals, "int8"))
    assert torch.equal(codec.decode(bytearray(buf), dtype="wire").values, out.values)
    scale = vals.abs().amax(dim=1, keepdim=True) / 127 if vals.shape[0] else torch.zeros(0, 1)
    # half a scale, and float32's rounding of the division and of the product (a few ulps of the row's largest)
    assert bool(((out.values - vals).abs() <= scale * (0.5 + 1e-5)).all())
    zero = (vals == 0).all(dim=1)
    assert bool((out.values[zero] == 0).all())
    head = codec.header(buf)
    assert head["dtype"] == "int8"
    assert len(buf) == codec.HEADER_SIZE + head["id_len"] + ids.shape[0] * (4 + vals.shape[1])


@settings(max_examples=200, deadline=None)
@given(st.integers(-40, 40), st.lists(st.lists(st.integers(-127, 127), min_size=1, max_size=8), min_size=1,
                                      max_size=20), st.data())
def test_int8_rows_of_multiples_of_their_scale_are_exact(exponent, levels, data):
    """A row of integer multiples of its scale (a power of two, one level at +-127) comes back bit for bit."""
    dim = len(levels[0])
    q = np.array([(row * dim)[:dim] for row in levels], np.float32)
    for i in range(q.shape[0]):
        q[i, data.draw(st.integers(0, dim - 1))] = data.draw(st.sampled_from([-127, 127]))
    vals = torch.from_numpy(q * np.float32(2.0**exponent))
    out = codec.decode(codec.encode(RowSparse(torch.arange(q.shape[0]), vals, q.shape[0]), "index", "int8"))
    assert torch.equal(out.values, vals)


def test_int8_malformed_messages_rejected():
    """Every truncation and a value section that does not add up to ``n x (4 + dim)`` are refused; an unknown
    value code still is."""
    ids = np.array([1, 5, 9], np.int64)
    buf = codec.encode(RowSparse(torch.from_numpy(ids), torch.randn(3, 4), 20), "index", "int8")
    for cut in range(1, len(buf)):
        _decode_fails_cleanly(buf[:cut])
    with pytest.raises(codec.CodecError, match="sizes do not add up"):
        codec.decode(buf + b"\0", verify=False)
    fields = list(struct.unpack_from("<4sBBBBQQIIQQQ", buf))
    for code, match in [(0, "sizes do not add up"), (4, "unknown value dtype")]:
        fields[3] = code
        with pytest.raises(codec.CodecError, match=match):
            codec.decode(struct.pack("<4sBBBBQQIIQQQ", *fields) + buf[codec.HEADER_SIZE:], verify=False)
