"""Training state on disk: a directory of ``.npy`` arrays plus ``state.json`` naming them, with checksums.

A save never damages the previous checkpoint: arrays go to files named by a new *generation* number, each
written atomically, then the generation's own ``state.GGGGGG.json``, and only then does ``state.json`` (also
atomic, a copy of it) switch to them. A crash at any point leaves a ``state.json`` that names complete files.
Every state file carries a CRC-32 of its own content too, so a damaged byte anywhere is reported, not trained on.

The newest ``keep`` generations stay (default 2). A load tries ``state.json`` first, then older generations,
newest first: when the newest is damaged it says so and falls back (:func:`load_latest`). The generations found
damaged are listed in the states saved after that (``damaged``), and no save deletes their files: they stay for
inspection, and do not count among the ``keep``.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsembed.errors import UserError
from sparsembed.fsutil import atomic_write

FORMAT = "sparsembed-checkpoint"
VERSION = 1
STATE_FILE = "state.json"
#: Generations a save keeps unless told otherwise (``--keep-checkpoints``).
DEFAULT_KEEP = 2
_ARRAY_FILE = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)\.(?P<gen>\d{6})\.npy$")
_STATE_GEN_FILE = re.compile(r"^state\.(?P<gen>\d{6})\.json$")
# What atomic_write leaves behind when a process dies mid-write: ".<target>.<random>.tmp".
_TEMP_FILE = re.compile(r"^\.(?:[A-Za-z0-9_.]+\.\d{6}\.npy|state(?:\.\d{6})?\.json)\..+\.tmp$")


class CheckpointDamaged(UserError):
    """A checkpoint file that is missing, unreadable or fails its checksum; :attr:`what` says which and how,
    without the advice the message adds."""

    def __init__(self, what: str, advice: str = "restore it or retrain") -> None:
        super().__init__(f"{what}; {advice}")
        self.what = what


@dataclass
class Loaded:
    """What :func:`load_latest` read: the arrays and meta of ``generation``, from the state file ``path``;
    ``damaged``: the generations known to be damaged (skipped now, or listed by the state), for the next save."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    generation: int
    path: Path
    damaged: list[int]


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


def present(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` holds a checkpoint to resume: ``state.json`` or a generation's own state file."""
    model_dir = Path(model_dir)
    return (model_dir / STATE_FILE).is_file() or (
        model_dir.is_dir() and any(_STATE_GEN_FILE.match(p.name) for p in model_dir.iterdir()))


def read_state(model_dir: str | Path) -> dict[str, Any]:
    """The parsed and verified ``state.json`` of a checkpoint directory, or a UserError saying why it cannot be used."""
    path = Path(model_dir) / STATE_FILE
    if not path.is_file():
        raise UserError(f"no checkpoint in {model_dir}: {STATE_FILE} is missing; train first or check the path")
    return read_state_file(path)


def read_state_file(path: str | Path) -> dict[str, Any]:
    """One parsed and verified state file (``state.json`` or a generation's ``state.GGGGGG.json``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointDamaged(f"checkpoint {path} is missing")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointDamaged(f"checkpoint {path} is damaged ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointDamaged(f"{path} is not a sparsembed checkpoint")
    if state.get("version") != VERSION:
        raise UserError(f"{path} has checkpoint version {state.get('version')}; this sparsembed reads {VERSION}")
    # Checkpoints written before the self-checksum existed have none; every one written since is verified.
    if "crc32" in state and state["crc32"] != _state_crc32(state):
        raise CheckpointDamaged(f"checkpoint {path} is corrupt (checksum mismatch)")
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
    damaged = state.get("damaged", [])
    ok = ok and isinstance(damaged, list) and all(_is_count(g) for g in damaged)
    if not ok:
        raise CheckpointDamaged(f"checkpoint {path} is damaged (its list of arrays is malformed)")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_keep(keep: Any) -> int:
    """``keep`` (generations a save keeps) if it is an integer >= 1, else a UserError naming the flag."""
    if not (isinstance(keep, int) and not isinstance(keep, bool) and keep >= 1):
        raise UserError(f"invalid setting: --keep-checkpoints must be an integer >= 1, got {keep!r}")
    return keep


def save_checkpoint(model_dir: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any],
                    keep: int = DEFAULT_KEEP, damaged: Iterable[int] = ()) -> int:
    """Write ``arrays`` and ``meta`` as the next generation in ``model_dir``; return the generation number.

    If any write fails (a full disk, say), the files of the new generation written so far are removed again,
    so the previous checkpoint stays the one ``state.json`` names and no space is held by a half-made one.
    Afterwards this generation and the ``keep - 1`` newest complete ones before it stay; so do the ``damaged``
    generations (:attr:`Loaded.damaged`, and those the previous state listed), which the new state lists.
    """
    check_keep(keep)
    bad = [name for name in arrays if not _ARRAY_FILE.match(f"{name}.000001.npy")]
    if bad:  # a caller's mistake, caught here rather than as an unloadable checkpoint later
        raise ValueError(f"checkpoint array names must use [A-Za-z0-9_.] only: {bad}")
    model_dir = Path(model_dir)
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {model_dir}: {exc.strerror}; choose a writable --out") from exc
    current = _adopted_state(model_dir)
    on_disk = _generations_present(model_dir)
    generation = max([current.get("generation", 0), *on_disk]) + 1
    damaged = sorted(g for g in {*damaged, *current.get("damaged", [])} if g in on_disk)  # files still there
    written: list[Path] = []
    try:
        entries = {}
        for name, array in arrays.items():
            entries[name] = _write_array(model_dir / f"{name}.{generation:06d}.npy", array, written)
        state = {"format": FORMAT, "version": VERSION, "generation": generation, "arrays": entries, "meta": meta}
        if damaged:
            state["damaged"] = damaged
        state["crc32"] = _state_crc32(state)
        body = json.dumps(state, indent=1, default=_json_scalar).encode("utf-8")
        for target in (model_dir / _state_name(generation), model_dir / STATE_FILE):  # state.json switches last
            with atomic_write(target) as handle:
                handle.write(body)
            written.append(target)
    except BaseException:
        if model_dir / STATE_FILE not in written:  # not adopted: remove what this save wrote
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
        raise
    _remove_old_generations(model_dir, generation, keep, set(damaged))
    return generation


def _state_name(generation: int) -> str:
    return f"state.{generation:06d}.json"


def _adopted_state(model_dir: Path) -> dict[str, Any]:
    """The verified ``state.json`` ({} without a sound one). A checkpoint written before every generation had
    its own state file gets one now, so that a later load can fall back to it."""
    try:
        current = read_state(model_dir)
    except UserError:
        return {}
    own = model_dir / _state_name(current["generation"])
    if not own.exists():
        with atomic_write(own) as handle:
            handle.write((model_dir / STATE_FILE).read_bytes())
    return current


def _generations_present(model_dir: Path) -> dict[int, bool]:
    """Every generation with a file in ``model_dir``: True if it has its own state file (it was completed)."""
    found: dict[int, bool] = {}
    for path in model_dir.iterdir():
        match = _ARRAY_FILE.match(path.name) or _STATE_GEN_FILE.match(path.name)
        if match:
            gen = int(match["gen"])
            found[gen] = found.get(gen, False) or path.name.endswith(".json")
    return found


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


def _remove_old_generations(model_dir: Path, new: int, keep: int, damaged: set[int]) -> None:
    """Keep generation ``new``, the newest ``keep - 1`` complete ones before it and the ``damaged`` ones; delete
    the files of every other generation (older, or never completed: a save cut short) and the temporary files
    of a process killed while saving."""
    present = _generations_present(model_dir)
    sound = sorted((g for g, done in present.items() if done and g < new and g not in damaged), reverse=True)
    kept = {new, *sound[: keep - 1], *damaged}
    doomed = set(present) - kept
    for path in model_dir.iterdir():
        match = _ARRAY_FILE.match(path.name) or _STATE_GEN_FILE.match(path.name)
        if (match and int(match["gen"]) in doomed) or _TEMP_FILE.match(path.name):
            with contextlib.suppress(OSError):
                path.unlink()


def load_checkpoint(model_dir: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and verify every array of the newest sound checkpoint in ``model_dir``; return (arrays, meta).

    Falls back to older generations as :func:`load_latest` does, saying so on stderr.
    """
    loaded = load_latest(model_dir)
    return loaded.arrays, loaded.meta


def load_latest(model_dir: str | Path, on_damaged: Callable[[str], None] | None = None) -> Loaded:
    """The newest generation in ``model_dir`` whose state file and arrays verify.

    ``state.json`` is tried first, then each generation's own state file, newest first. When one is damaged
    (missing, unreadable, checksum mismatch) and an older one loads, ``on_damaged`` gets one line per damaged
    generation naming the damaged file (default: printed to stderr); nothing is deleted. When none loads, the
    error of the newest is raised.
    """
    model_dir = Path(model_dir)
    older = sorted((p for p in model_dir.glob("state.*.json") if _STATE_GEN_FILE.match(p.name)), reverse=True)
    if not (model_dir / STATE_FILE).is_file() and not older:
        read_state(model_dir)  # raises: no checkpoint here
    errors: list[CheckpointDamaged] = []
    tried: set[int] = set()  # generations whose state verified
    skipped: set[int] = set()  # generations found damaged
    for path in [model_dir / STATE_FILE, *older]:
        state = None
        try:
            state = read_state_file(path)
            if state["generation"] in tried:
                continue
            tried.add(state["generation"])
            arrays = _read_arrays(model_dir, state)
        except CheckpointDamaged as exc:
            errors.append(exc)
            own = _STATE_GEN_FILE.match(path.name)
            skipped.add(state["generation"] if state is not None else int(own["gen"]) if own else 0)
            continue
        report = on_damaged or (lambda line: print(f"sparsembed: {line}", file=sys.stderr))
        for exc in errors:
            report(f"{exc.what}; falling back to generation {state['generation']} ({path}); the damaged files "
                   "are left in place")
        damaged = sorted((skipped - {0, state["generation"]}) | set(state.get("damaged", [])))
        return Loaded(arrays, state["meta"], state["generation"], path, damaged)
    raise errors[0]


def _read_arrays(model_dir: Path, state: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every array a verified state names, each checked against its checksum, shape and dtype."""
    arrays = {}
    for name, entry in state["arrays"].items():
        path = model_dir / entry["file"]
        if not path.is_file():
            raise CheckpointDamaged(f"checkpoint {model_dir} is incomplete: {entry['file']} is missing")
        if file_crc32(path) != entry["crc32"]:
            raise CheckpointDamaged(f"checkpoint file {path} is corrupt (checksum mismatch)")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, SyntaxError) as exc:  # np.load's ways of rejecting a bad header
            raise CheckpointDamaged(f"checkpoint file {path} cannot be read ({exc})") from exc
        if list(array.shape) != entry["shape"] or array.dtype.str != entry["dtype"]:
            raise CheckpointDamaged(f"checkpoint file {path} has shape {array.shape} {array.dtype}, expected "
                                    f"{entry['shape']} {entry['dtype']}")
        arrays[name] = array
    return arrays


def memory_available() -> int | None:
    """Bytes of memory the kernel says a process can still take without swapping (``MemAvailable``), or None
    where ``/proc/meminfo`` does not say (not Linux)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class BackgroundWriter:
    """Writes one checkpoint at a time on a thread of its own, from copies, so training goes on meanwhile.

    Most of a save is the wait for ``fsync``; a training loop that saved in its own thread left every core idle
    for it at each epoch's end. The copies are taken by the caller's thread at the moment the checkpoint
    describes (:meth:`copy`), into buffers kept for the next save; a save starts only once the previous one is
    on disk (:meth:`start` waits), so the disk's pace bounds how far training runs ahead of it. A failed write
    raises, with its own exception, from the next :meth:`start` or :meth:`wait`: the previous checkpoint is then
    still the one ``state.json`` names (:func:`save_checkpoint` removes a half-made generation).

    Copies cost memory as large as the state they copy; :meth:`fits` says whether they fit in a quarter of the
    memory still available, and a caller saves in its own thread when they do not.
    """

    #: The share of the available memory (``MemAvailable``) that copies for a background save may take.
    MEMORY_SHARE = 0.25

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._buffers: dict[str, np.ndarray] = {}

    @property
    def busy(self) -> bool:
        """True while a save is being written."""
        return self._thread is not None and self._thread.is_alive()

    def fits(self, arrays: dict[str, np.ndarray]) -> bool:
        """Whether copies of ``arrays`` (name: array, as :meth:`copy` names them), beyond the buffers already
        held for them, fit in :attr:`MEMORY_SHARE` of the available memory; False where that is unknown."""
        available = memory_available()
        if available is None:
            return False
        needed = sum(array.nbytes for name, array in arrays.items() if not self._holds(name, array))
        return needed <= self.MEMORY_SHARE * available

    def _holds(self, name: str, array: np.ndarray) -> bool:
        buffer = self._buffers.get(name)
        return buffer is not None and buffer.shape == array.shape and buffer.dtype == array.dtype

    def copy(self, name: str, array: np.ndarray) -> np.ndarray:
        """A copy of ``array`` in this writer's buffer ``name`` (reused from save to save); waits for the save
        being written, which may still read that buffer."""
        self.wait()
        if not self._holds(name, array):
            self._buffers[name] = np.empty_like(array, order="C")
        buffer = self._buffers[name]
        np.copyto(buffer, array)
        return buffer

    def start(self, write: Callable[[], Any]) -> None:
        """Run ``write`` on the writer's thread, after the save before it has finished."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(write,), name="sparsembed-checkpoint")
        self._thread.start()

    def _run(self, write: Callable[[], Any]) -> None:
        try:
            write()
        except BaseException as exc:  # handed to the training thread, which raises it
            self._error = exc

    def wait(self) -> None:
        """Return once no save is being written; raise the exception of a save that failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def release(self) -> None:
        """Wait for the save being written, then give the copies' memory back (training has ended)."""
        try:
            self.wait()
        finally:
            self._buffers.clear()
