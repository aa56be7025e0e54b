"""How the command's process ends (sparsembed.entry): with the command's code, after every exit handler and
non-daemon thread, and, once torch is loaded and the command succeeded, without the interpreter's teardown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from sparsembed import entry

out = Path(sys.argv[1])
entry.arm()
if sys.argv[2] == "torch":
    import torch  # noqa: F401
atexit.register(lambda: (out / "handler").write_text("ran"))


def late():
    time.sleep(0.3)
    (out / "thread").write_text("done")


class Teardown:
    def __del__(self):
        (out / "teardown").write_text("ran")


kept = Teardown()
threading.Thread(target=late).start()
print("buffered", end="")
if sys.argv[3] == "raise":
    raise RuntimeError("a bug")
entry.leave(int(sys.argv[4]))
"""


@pytest.mark.parametrize("loaded", ["torch", "plain"])
@pytest.mark.parametrize("how", ["leave", "raise"])
@pytest.mark.parametrize("code", [0, 3])
def test_the_process_ends_with_the_code_after_handlers_and_threads(tmp_path: Path, loaded: str, how: str,
                                                                   code: int) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path), loaded, how, str(code)], capture_output=True,
                          text=True, timeout=120)
    assert done.stdout == "buffered"  # flushed before the process ended
    assert (tmp_path / "handler").read_text() == "ran" and (tmp_path / "thread").read_text() == "done"
    if how == "raise":
        assert done.returncode == 1 and "RuntimeError: a bug" in done.stderr
    else:
        assert done.returncode == code and done.stderr == ""
    # the interpreter's teardown (which runs __del__ of module globals) is skipped only once torch is loaded and
    # the command returned 0
    assert (tmp_path / "teardown").exists() == (loaded == "plain" or how == "raise" or code != 0)


def test_python_dash_m_and_the_script_end_with_the_commands_code(tmp_path: Path) -> None:
    for argv in ([sys.executable, "-m", "sparsembed"], [str(Path(sys.executable).with_name("sparsembed"))]):
        bad = subprocess.run([*argv, "train", "missing.txt", "--out", "o"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
        assert bad.returncode == 2 and bad.stderr.startswith("sparsembed: error:"), bad.stderr
        assert not (tmp_path / "o").exists()
