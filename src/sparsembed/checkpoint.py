"""Training state on disk: a directory of ``.npy`` arrays plus ``state.json`` naming them, with checksums.

A save never damages the previous checkpoint: arrays go to files named by a new *generation* number, each
written atomically, and only then does ``state.json`` (also atomic) switch to them; files of older
generations are removed last. A crash at any point leaves a ``state.json`` that names complete files.
"""

from __future__ import annotations

import contextlib
import json
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .fsutil import atomic_write

FORMAT = "sparsembed-checkpoint"
VERSION = 1
STATE_FILE = "state.json"
_ARRAY_FILE = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)\.(?P<gen>\d{6})\.npy$")


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
    """The parsed ``state.json`` of a checkpoint directory, or a UserError saying why it cannot be used."""
    path = Path(model_dir) / STATE_FILE
    if not path.is_file():
        raise UserError(f"no checkpoint in {model_dir}: {STATE_FILE} is missing; train first or check the path")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"checkpoint {path} is damaged ({exc}); restore it or retrain") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a sparsembed checkpoint")
    if state.get("version") != VERSION:
        raise UserError(f"{path} has checkpoint version {state.get('version')}; this sparsembed reads {VERSION}")
    return state


def save_checkpoint(model_dir: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> int:
    """Write ``arrays`` and ``meta`` as the next generation in ``model_dir``; return the generation number."""
    model_dir = Path(model_dir)
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {model_dir}: {exc.strerror}; choose a writable --out") from exc
    previous = 0
    with contextlib.suppress(UserError):
        previous = int(read_state(model_dir).get("generation", 0))
    generation = previous + 1
    entries = {}
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        file_name = f"{name}.{generation:06d}.npy"
        with atomic_write(model_dir / file_name) as handle:
            writer = _Crc32Writer(handle)
            np.lib.format.write_array(writer, array, allow_pickle=False)
        entries[name] = {"file": file_name, "crc32": writer.crc, "shape": list(array.shape), "dtype": array.dtype.str}
    state = {"format": FORMAT, "version": VERSION, "generation": generation, "arrays": entries, "meta": meta}
    with atomic_write(model_dir / STATE_FILE) as handle:
        handle.write(json.dumps(state, indent=1, default=_json_scalar).encode("utf-8"))
    _remove_other_generations(model_dir, generation)
    return generation


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's state.json")


def _remove_other_generations(model_dir: Path, keep: int) -> None:
    for path in model_dir.iterdir():
        match = _ARRAY_FILE.match(path.name)
        if match and int(match["gen"]) != keep:
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
        except (OSError, ValueError) as exc:
            raise UserError(f"checkpoint file {path} cannot be read ({exc}); restore it or retrain") from exc
        if list(array.shape) != entry["shape"] or array.dtype.str != entry["dtype"]:
            raise UserError(f"checkpoint file {path} has shape {array.shape} {array.dtype}, expected {entry}")
        arrays[name] = array
    return arrays, state["meta"]
