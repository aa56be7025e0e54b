"""Training state on disk: a directory of ``.npy`` arrays plus ``state.json`` naming them, with checksums.

A save never damages the previous checkpoint: arrays go to files named by a new *generation* number, each
written atomically, and only then does ``state.json`` (also atomic) switch to them; files of older
generations are removed last. A crash at any point leaves a ``state.json`` that names complete files.
``state.json`` carries a CRC-32 of its own content too, so a damaged byte anywhere is reported, not trained on.
"""

from __future__ import annotations

import contextlib
import json
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from sparsembed.errors import UserError
from sparsembed.fsutil import atomic_write

FORMAT = "sparsembed-checkpoint"
VERSION = 1
STATE_FILE = "state.json"
_ARRAY_FILE = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)\.(?P<gen>\d{6})\.npy$")
# What atomic_write leaves behind when a process dies mid-write: ".<target>.<random>.tmp".
_TEMP_FILE = re.compile(r"^\.(?:[A-Za-z0-9_.]+\.\d{6}\.npy|state\.json)\..+\.tmp$")


class _Crc32Writer:
    """A write-only file wrapper that keeps a running CRC-32 of everything written through it."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.crc = 0

    def write(self, data) -> int:
        self.crc = zlib.crc32(data, self.crc)
        return self.handle.write(data)


def file_crc32(path: Path, chunk: int = 1 << 22) -> int:
    """CRC-32 of a file, streamed in chunks (no full copy in memory)."""
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


def read_state(model_dir: str | Path) -> dict[str, Any]:
    """The parsed and verified ``state.json`` of a checkpoint directory, or a UserError saying why it cannot be used."""
    path = Path(model_dir) / STATE_FILE
    if not path.is_file():
        raise UserError(f"no checkpoint in {model_dir}: {STATE_FILE} is missing; train first or check the path")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"checkpoint {path} is damaged ({exc}); restore it or retrain") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a sparsembed checkpoint")
    if state.get("version") != VERSION:
        raise UserError(f"{path} has checkpoint version {state.get('version')}; this sparsembed reads {VERSION}")
    # Checkpoints written before the self-checksum existed have none; every one written since is verified.
    if "crc32" in state and state["crc32"] != _state_crc32(state):
        raise UserError(f"checkpoint {path} is corrupt (checksum mismatch); restore it or retrain")
    _check_layout(state, path)
    return state


def _state_crc32(state: dict[str, Any]) -> int:
    """CRC-32 of everything in a state but its own checksum, in a canonical JSON form (stable across a reload)."""
    body = {key: value for key, value in state.items() if key != "crc32"}
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":"), default=_json_scalar).encode("utf-8"))


def _check_layout(state: dict[str, Any], path: Path) -> None:
    """Raise UserError unless the state names its arrays the way save_checkpoint writes them."""
    arrays = state.get("arrays")
    ok = isinstance(arrays, dict) and isinstance(state.get("meta"), dict) and _is_count(state.get("generation"))
    for entry in arrays.values() if isinstance(arrays, dict) else ():
        ok = ok and isinstance(entry, dict) and isinstance(entry.get("file"), str)
        # Only a plain file name of this directory: a damaged state must not point a load anywhere else.
        ok = ok and _ARRAY_FILE.match(entry["file"]) is not None and _is_count(entry.get("crc32"))
        ok = ok and isinstance(entry.get("shape"), list) and all(_is_count(n) for n in entry["shape"])
        ok = ok and isinstance(entry.get("dtype"), str)
        if not ok:
            break
    if not ok:
        raise UserError(f"checkpoint {path} is damaged (its list of arrays is malformed); restore it or retrain")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def save_checkpoint(model_dir: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> int:
    """Write ``arrays`` and ``meta`` as the next generation in ``model_dir``; return the generation number.

    If any write fails (a full disk, say), the files of the new generation written so far are removed again,
    so the previous checkpoint stays the one ``state.json`` names and no space is held by a half-made one.
    """
    bad = [name for name in arrays if not _ARRAY_FILE.match(f"{name}.000001.npy")]
    if bad:  # a caller's mistake, caught here rather than as an unloadable checkpoint later
        raise ValueError(f"checkpoint array names must use [A-Za-z0-9_.] only: {bad}")
    model_dir = Path(model_dir)
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {model_dir}: {exc.strerror}; choose a writable --out") from exc
    generation = _next_generation(model_dir)
    written: list[Path] = []
    try:
        entries = {}
        for name, array in arrays.items():
            entries[name] = _write_array(model_dir / f"{name}.{generation:06d}.npy", array, written)
        state = {"format": FORMAT, "version": VERSION, "generation": generation, "arrays": entries, "meta": meta}
        state["crc32"] = _state_crc32(state)
        with atomic_write(model_dir / STATE_FILE) as handle:
            handle.write(json.dumps(state, indent=1, default=_json_scalar).encode("utf-8"))
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    _remove_other_generations(model_dir, generation)
    return generation


def _next_generation(model_dir: Path) -> int:
    """One above every generation in use: named by state.json or present as files (left by an interrupted save).

    So a save never overwrites, and on failure never deletes, a file it did not write itself.
    """
    highest = 0
    with contextlib.suppress(UserError):
        highest = read_state(model_dir)["generation"]
    for path in model_dir.iterdir():
        match = _ARRAY_FILE.match(path.name)
        if match:
            highest = max(highest, int(match["gen"]))
    return highest + 1


def _write_array(path: Path, array: np.ndarray, written: list[Path]) -> dict[str, Any]:
    """Write one array atomically (appending its path to ``written``); return its state entry."""
    array = np.ascontiguousarray(array)
    if array.dtype.hasobject:
        raise ValueError(f"checkpoint array {path.name} holds Python objects; only plain numeric arrays are stored")
    with atomic_write(path) as handle:
        writer = _Crc32Writer(handle)
        # Header, then the array's own memory: np.save through a wrapper would copy it in 16 MB chunks.
        np.lib.format.write_array_header_1_0(writer, np.lib.format.header_data_from_array_1_0(array))
        writer.write(memoryview(array.reshape(-1).view(np.uint8)))
    written.append(path)
    return {"file": path.name, "crc32": writer.crc, "shape": list(array.shape), "dtype": array.dtype.str}


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's state.json")


def _remove_other_generations(model_dir: Path, keep: int) -> None:
    """Delete older generations' arrays, and temporary files left by a process killed while saving."""
    for path in model_dir.iterdir():
        match = _ARRAY_FILE.match(path.name)
        if (match and int(match["gen"]) != keep) or _TEMP_FILE.match(path.name):
            with contextlib.suppress(OSError):
                path.unlink()


def load_checkpoint(model_dir: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and verify every array of the checkpoint in ``model_dir``; return (arrays, meta)."""
    model_dir = Path(model_dir)
    state = read_state(model_dir)
    arrays = {}
    for name, entry in state["arrays"].items():
        path = model_dir / entry["file"]
        if not path.is_file():
            raise UserError(f"checkpoint {model_dir} is incomplete: {entry['file']} is missing; restore it or retrain")
        if file_crc32(path) != entry["crc32"]:
            raise UserError(f"checkpoint file {path} is corrupt (checksum mismatch); restore it or retrain")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, SyntaxError) as exc:  # np.load's ways of rejecting a bad header
            raise UserError(f"checkpoint file {path} cannot be read ({exc}); restore it or retrain") from exc
        if list(array.shape) != entry["shape"] or array.dtype.str != entry["dtype"]:
            raise UserError(f"checkpoint file {path} has shape {array.shape} {array.dtype}, expected {entry}")
        arrays[name] = array
    return arrays, state["meta"]
