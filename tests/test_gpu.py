"""word2vec on a device (:mod:`sparsembed.gpu`): the Triton kernels against a sequential reference, their hashes
and subsampling, NaN reports, the model's runs and exact resume, quality of the kernels' updates on the planted
corpus, and the command line's ``--device``.

Without a CUDA device (CI) the kernels run through Triton's interpreter (``tests/conftest.py``), one program after
another; with one, the comparisons run the compiled kernels as one program (deterministic) and the tests that need
the interpreter's order are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("triton", reason="the GPU kernels are Triton's (pip install 'sparsembed[gpu]')")

from gpu_reference import reference_job  # noqa: E402
from sparsembed import Word2Vec  # noqa: E402
from sparsembed.errors import UserError  # noqa: E402
from sparsembed.gpu import kernels  # noqa: E402
from sparsembed.gpu.engine import DeviceTrainer, check_device, interpreting, run_key, subsample_draws  # noqa: E402
from sparsembed.word2vec.demo import generate_corpus, write_analogies  # noqa: E402
from sparsembed.word2vec.kernels import unpack_alias  # noqa: E402

needs_interpreter = pytest.mark.skipif(not interpreting(), reason="needs Triton's interpreter (programs in order)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICE = torch.device("cpu") if interpreting() else torch.device("cuda")


def _problem(seed: int = 0, vocab: int = 40, dim: int = 20, tokens: int = 500):
    """A random corpus of three sentences, matrices, a random alias table and subsampling thresholds."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, tokens).astype(np.int32)
    starts = np.array([0, tokens // 5, tokens // 2 + 3, tokens], dtype=np.int64)
    syn0 = ((rng.random((vocab, dim), dtype=np.float32) - 0.5) / dim).astype(np.float32)
    syn1 = ((rng.random((vocab, dim), dtype=np.float32) - 0.5) / dim).astype(np.float32)
    threshold = rng.integers(0, 2**32, vocab).astype(np.int64)
    alias = rng.integers(0, vocab, vocab).astype(np.int32)
    sample = rng.integers(2**31, 2**32, vocab).astype(np.int64)
    return ids, starts, syn0, syn1, sample, threshold, alias


@pytest.mark.parametrize("sg", [0, 1])
def test_kernels_equal_the_sequential_reference(sg: int) -> None:
    ids, starts, syn0, syn1, sample, threshold, alias = _problem(seed=sg)
    # one program: the compiled kernel on a GPU runs it in order too
    trainer = DeviceTrainer(syn0, syn1, ids, starts, sample, threshold, alias, DEVICE, chunk=len(ids))
    ref0, ref1 = syn0.copy(), syn1.copy()
    for epoch in range(2):
        args = (sg, 3, 4, 0.05, 1e-4, 2 * len(ids), epoch * len(ids), 5, epoch, 0, len(ids))
        got = trainer.train_job(*args)
        want = reference_job(trainer, ref0, ref1, *args)
        assert got[1:] == want[1:]
        assert got[0] == pytest.approx(want[0], rel=1e-5 if interpreting() else 1e-4)
    assert np.abs(ref0 - syn0).max() > 1e-3  # it trained
    atol = 2e-6 if interpreting() else 2e-5  # a GPU's exp / log and fused multiply-adds round a little otherwise
    np.testing.assert_allclose(trainer.syn0.cpu().numpy(), ref0, atol=atol)
    np.testing.assert_allclose(trainer.syn1.cpu().numpy(), ref1, atol=atol)


@needs_interpreter
@pytest.mark.parametrize("sg", [0, 1])
def test_how_tokens_are_cut_into_programs_changes_nothing_in_order(sg: int) -> None:
    ids, starts, syn0, syn1, sample, threshold, alias = _problem(seed=3, tokens=300)
    results = []
    for chunk in (1, 7, 300):
        trainer = DeviceTrainer(syn0, syn1, ids, starts, sample, threshold, alias, DEVICE, chunk=chunk)
        loss = trainer.train_job(sg, 4, 3, 0.05, 1e-4, len(ids), 0, 1, 0, 0, len(ids))
        results.append((loss, trainer.syn0.numpy().copy(), trainer.syn1.numpy().copy()))
    for loss, a, b in results[1:]:
        assert loss[1:] == results[0][0][1:] and loss[0] == pytest.approx(results[0][0][0], rel=1e-6)
        np.testing.assert_array_equal(a, results[0][1])
        np.testing.assert_array_equal(b, results[0][2])


def test_subsampling_keeps_each_word_at_its_rate_and_windows_stay_in_sentences() -> None:
    vocab, n = 4, 40_000
    ids = np.tile(np.arange(vocab, dtype=np.int32), n // vocab)
    starts = np.array([0, 1000, 25_000, n], dtype=np.int64)
    rates = np.array([1.0, 0.5, 0.25, 0.0])
    sample = np.minimum(rates * 2**32, 2**32 - 1).astype(np.int64)
    trainer = DeviceTrainer(np.zeros((vocab, 8), np.float32), np.zeros((vocab, 8), np.float32), ids, starts, sample,
                            np.full(vocab, 2**32 - 1, np.int64), np.arange(vocab, dtype=np.int32), DEVICE)
    job = trainer.prepare(run_key(1, 0), 0, n)
    kept = np.bincount(job.tokens.cpu().numpy(), minlength=vocab) / (n // vocab)
    np.testing.assert_allclose(kept, rates, atol=0.02)
    positions = job.positions.cpu().numpy()
    lows, highs = job.lows.cpu().numpy(), job.highs.cpu().numpy()
    sentence = np.searchsorted(starts, positions, side="right")
    assert (sentence[lows] == sentence).all() and (sentence[highs - 1] == sentence).all()
    assert ((highs == len(positions)) | (sentence[np.minimum(highs, len(positions) - 1)] != sentence)).all()
    # another epoch draws other coins
    assert not torch.equal(trainer.prepare(run_key(1, 1), 0, n).positions, job.positions)


def test_the_hash_on_torch_is_the_kernels() -> None:
    """Subsampling (torch) and windows / noise words (the kernel) draw from one hash: the reference's, which the
    kernel equality tests hold to."""
    from gpu_reference import draw

    positions = torch.tensor([0, 1, 2, 2**31 + 5, 2**32 - 1, 2**32 + 9], dtype=torch.int64)
    for key, stream in ((0, 0), (123456789, 7), (run_key(9, 3), kernels.HASH_STREAM_SUBSAMPLE)):
        got = subsample_draws(key, positions, stream).tolist()
        assert got == [int(draw(key, int(p) & 0xFFFFFFFF, stream)) for p in positions.tolist()]
        assert all(0 <= v < 2**32 for v in got)


@pytest.mark.parametrize("sg", [0, 1])
def test_a_nan_row_reaches_the_loss(sg: int) -> None:
    ids, starts, syn0, syn1, sample, threshold, alias = _problem(tokens=60)
    syn0[:] = np.nan
    trainer = DeviceTrainer(syn0, syn1, ids, starts, None, threshold, alias, DEVICE, chunk=8)
    loss, pairs, trained = trainer.train_job(sg, 2, 2, 0.025, 1e-4, 60, 0, 1, 0, 0, 60)
    assert trained == 60 and pairs > 0 and np.isnan(loss)


# ------------------------------------------------------------------------------------------ the model on a device
def _tiny_corpus(path: Path, sentences: int = 12, length: int = 30) -> Path:
    rng = np.random.default_rng(5)
    words = [f"w{i}" for i in range(10)]
    path.write_text("\n".join(" ".join(rng.choice(words, length)) for _ in range(sentences)) + "\n")
    return path


@needs_interpreter
@pytest.mark.parametrize("sg", [0, 1])
def test_a_model_on_the_device_resumes_exactly(tmp_path: Path, sg: int) -> None:
    corpus = _tiny_corpus(tmp_path / "c.txt")
    settings = dict(sg=sg, vector_size=16, epochs=2, min_count=1, window=3, negative=3, seed=4, device="cuda")

    def fresh() -> Word2Vec:
        model = Word2Vec(**settings)
        model.build_vocab(corpus)
        model.settings.job_tokens = 100  # several jobs an epoch
        return model

    whole = fresh()
    whole.train(progress=False)
    assert [h["epoch"] for h in whole.history] == [1, 2]
    part = fresh()
    summary = part.train(progress=False, out=tmp_path / "run", stop_after_jobs=3)
    assert summary["interrupted"] is False and not part.done
    part.save(tmp_path / "run")
    resumed = Word2Vec.load(tmp_path / "run", with_corpus=True)
    assert resumed.settings.device == "cuda" and resumed.settings.job_tokens == 100
    resumed.train(progress=False)
    np.testing.assert_array_equal(resumed.syn0, whole.syn0)
    np.testing.assert_array_equal(resumed.syn1, whole.syn1)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in whole.history], rel=1e-9)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("planted_gpu")
    corpus, questions = directory / "corpus.txt", directory / "questions.txt"
    generate_corpus(corpus, n_tokens=300_000, seed=3)
    write_analogies(questions, seed=3)
    return corpus, questions


@pytest.mark.slow
@pytest.mark.parametrize("sg", [0, 1])
def test_the_device_updates_learn_as_well_as_the_cpu_kernels(planted, sg: int) -> None:
    """The kernels' algorithm (run by the compiled reference, in order) scores the planted analogies as the CPU
    kernel of the same updates does; what a GPU's races add is measured by the GPU benchmark."""
    corpus, questions = planted
    scores = {}
    cpu = Word2Vec(corpus, sg=sg, vector_size=48, epochs=5, workers=1, seed=1)
    scores["cpu"], _ = cpu.wv.evaluate_word_analogies(questions, restrict_vocab=30000)
    model = Word2Vec(sg=sg, vector_size=48, epochs=5, workers=1, seed=1)
    model.build_vocab(corpus)
    schedule, tables = model.schedule(), model.kernel_tables()
    trainer = DeviceTrainer(np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32), model.corpus.ids,
                            schedule.sentence_starts, tables["sample_ints"], *unpack_alias(tables["packed_alias"]),
                            torch.device("cpu"))
    s = model.settings
    losses = []
    for epoch in range(s.epochs):
        loss = pairs = 0
        for job in range(schedule.n_jobs):
            total, before = schedule.decay(epoch, job)
            got = reference_job(trainer, model.syn0, model.syn1, sg, s.window, s.negative, s.alpha, s.min_alpha,
                                total, before, s.seed, epoch, *schedule.tokens(job, job + 1))
            loss, pairs = loss + got[0], pairs + got[1]
        losses.append(loss / pairs)
    assert losses[-1] < losses[0]
    scores["device"], _ = model.wv.evaluate_word_analogies(questions, restrict_vocab=30000)
    assert scores["device"] > 0.5
    assert scores["device"] >= scores["cpu"] - 0.1, scores


# ------------------------------------------------------------------------------------------------ bad settings
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"device": "gpu"}, "--device must be cpu, cuda or cuda:N"),
    ({"device": "cuda", "sg": 1, "kernel": "exact"}, "skip-gram trains with the batched kernel's updates only"),
    ({"device": "cuda", "kernel": "batched"}, "CBOW trains with the exact kernel's updates only"),
    ({"device": "cuda", "subwords": (3, 6)}, "--subwords is not available on --device cuda"),
])
def test_bad_device_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Word2Vec(**kwargs)


def _cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsembed", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_cli_without_a_cuda_device_says_so_before_reading_the_corpus(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    _tiny_corpus(tmp_path / "c.txt")
    done = _cli(["train", "c.txt", "--out", "o", "--device", "cuda", "--min-count", "1"], tmp_path,
                TRITON_INTERPRET="0")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device is visible" in lines[0] and "--device cpu" in lines[0], done.stderr
    assert not (tmp_path / "o").exists()


def test_check_device_without_cuda(monkeypatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(UserError, match=r"no CUDA device is visible.*--device cpu"):
        check_device("cuda:1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert check_device("cuda") == torch.device("cpu")  # the interpreter's stand-in


def test_cli_refuses_a_device_with_several_ranks(tmp_path: Path) -> None:
    _tiny_corpus(tmp_path / "c.txt")
    done = _cli(["train", "c.txt", "--out", "o", "--device", "cuda", "--nproc", "2"], tmp_path)
    assert done.returncode == 2 and "runs on CPUs only for now" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@needs_interpreter
def test_cli_trains_on_the_device_and_resumes_on_the_cpu(tmp_path: Path) -> None:
    _tiny_corpus(tmp_path / "c.txt", sentences=6, length=25)
    common = ["--min-count", "1", "--dim", "8", "--window", "2", "--quiet"]
    done = _cli(["train", "c.txt", "--out", "o", "--device", "cuda", "--epochs", "1", *common], tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "vectors.bin").stat().st_size > 0
    model = Word2Vec.load(tmp_path / "o")
    assert model.settings.device == "cuda" and model.done
    again = _cli(["train", "--resume", "o", "--device", "cpu"], tmp_path)
    assert again.returncode == 0 and "already complete" in again.stderr


@needs_interpreter
def test_the_gpu_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    """benchmarks/bench_gpu.py on a tiny corpus through the interpreter: the device run has no chance to debug it."""
    rng = np.random.default_rng(2)
    (tmp_path / "tiny.txt").write_text(" ".join(rng.choice([f"w{i}" for i in range(30)], 600)) + "\n")
    (tmp_path / "questions-words.txt").write_text(": s\nw1 w2 w3 w4\nw5 w6 w7 w8\n")
    (tmp_path / "wordsim353.tsv").write_text("w1\tw2\t5.0\nw3\tw4\t1.0\nw5\tw9\t3.0\n")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
    done = subprocess.run([sys.executable, str(script), "--corpus", "tiny.txt", "--epochs", "1", "--shapes", "8:1",
                           "--eval-dir", ".", "--json", "g.json"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "g.json").read_text())
    assert [row["model"] for row in report["results"]] == ["cbow", "skipgram"]
    for row in report["results"]:
        assert row["chunk"] == 8 and row["gpu"]["words_per_s"] > 0 and "analogy" in row["cpu_scores"]
        assert 0 < row["kept_share"] <= 1
    assert "| cbow | gpu |" in done.stdout


COMPILE = r"""
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from sparsembed.gpu import kernels
sig = {"syn0": "*fp32", "syn1": "*fp32", "tokens": "*i32", "positions": "*i64", "lows": "*i32", "highs": "*i32",
       "n_tokens": "i32", "chunk": "i32", "key": "i32", "window": "i32", "n_rows": "i32", "alias_threshold": "*i64",
       "alias_row": "*i32", "alpha_start": "fp32", "alpha_end": "fp32", "slope": "fp32", "done_before": "fp32",
       "first_position": "i32", "loss_out": "*fp32", "pairs_out": "*i32", "DIM": "constexpr", "NEG": "constexpr",
       "BD": "constexpr", "BW": "constexpr", "BN": "constexpr"}
for arch in (90, 80):
    for fn, least in ((kernels.cbow_kernel, 1), (kernels.skipgram_kernel, 16)):
        const = {"DIM": 100, "NEG": 5, "BD": 128, "BW": 16, "BN": max(least, 8)}
        k = compile(ASTSource(fn, sig, const), target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
        assert "st.global" in k.asm["ptx"], fn
        print(arch, fn.__name__, len(k.asm["cubin"]))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the other tests run the compiled kernels")
def test_the_kernels_compile_for_hopper_and_ampere() -> None:
    """The compiled path, which the interpreter does not take: Triton lowers both kernels to machine code for sm_90
    (H100 / H200) and sm_80 (A100) without a GPU present."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.split("\n")) >= 4
