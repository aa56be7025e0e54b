"""benchmarks/bench_commits.py without training: an older commit's tree comes out whole, and bad input is one line
with exit status 2, run from a temporary working directory as a user types it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench_utils import BENCHMARKS, load_benchmark

ROOT = BENCHMARKS.parent
BENCH = BENCHMARKS / "bench_commits.py"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_commits")


def test_extracted_tree_is_the_commits_src(bench, tmp_path: Path) -> None:
    src = bench.extract_tree("HEAD", tmp_path / "base")
    committed = subprocess.run(["git", "-C", str(ROOT), "show", "HEAD:src/sparsembed/word2vec/kernels.py"],
                               capture_output=True, text=True, check=True).stdout
    assert (src / "sparsembed" / "word2vec" / "kernels.py").read_text() == committed
    assert not (tmp_path / "base" / "tree.tar").exists()


@pytest.mark.parametrize("args, says", [
    (["--base", "no-such-commit", "--corpus", "corpus.txt"], "--base 'no-such-commit' is no commit"),
    (["--base", "HEAD", "--corpus", "missing.txt"], "--corpus missing.txt is not a file"),
    (["--base", "HEAD", "--corpus", "corpus.txt", "--models", "cbow,glove"], "got glove"),
    (["--base", "HEAD", "--corpus", "corpus.txt", "--repeats", "0"], "--repeats must be at least 1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    (tmp_path / "corpus.txt").write_text("a b c\n")
    done = subprocess.run([sys.executable, str(BENCH), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("bench_commits: error: "), done.stderr
    assert says in lines[0]
