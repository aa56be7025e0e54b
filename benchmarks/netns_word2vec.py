"""Data-parallel word2vec across hosts: network namespaces on one machine, each link limited to 1 Gbit/s.

    sudo .venv/bin/python benchmarks/netns_word2vec.py --corpus /tmp/w2v/wiki17m.txt --job-tokens 250000 1000000 \\
        --repeats 3 --json benchmarks/results/netns_word2vec.json

Root only. Builds 2 "hosts" with ``benchmarks/netns_exchange.py`` (namespaces ``sxe0``, ``sxe1`` on a bridge, every
veth end under ``tc tbf rate 1gbit``), checks the link with one TCP stream, and for every ``--job-tokens`` J runs
in each namespace::

    GLOO_SOCKET_IFNAME=sxe{i}n torchrun --nnodes 2 --nproc-per-node 1 --node-rank i --master-addr 10.77.0.1 \\
        --master-port P -m sparsembed train CORPUS --out OUT --workers 1 --epochs E --job-tokens J \\
        --transport auto --quiet

Both ranks get the same corpus path and the same ``--out`` (rank 0 writes). ``--transport auto`` uses shared
memory only when every rank has the same ``/proc/self/ns/net``; here they do not, so the exchange goes over gloo on
the veth, which the script checks from the step records (no matrix may have encoding ``shm``). Unless ``--no-loopback``,
the same training also runs on loopback without namespaces for comparison::

    .venv/bin/python -m sparsembed train CORPUS --out OUT2 --nproc 2 --workers 1 --epochs E --job-tokens J \\
        --transport tcp --quiet

``--flags NAME=FLAGS`` adds a variant of its own (``--flags "b4=--budget 4"``); ``--single`` also times one
process with one thread (``sparsembed train CORPUS --out D --workers 1``, no namespace) before each repeat, for the
speedup of the pair, whole command against whole command; ``--eval`` scores every run's vectors (analogy with
restrict_vocab 30000, wordsim353; gensim's files, ``sparsembed eval``).

From each run's ``metrics.jsonl`` (rank 0's step records): median and mean compute_s and exchange_s, exchange share
(sum exchange_s / sum (compute_s + exchange_s)), MB sent per step (median, and per matrix), words/s, the median
phases of each matrix's exchange (take, wait, land in the foreground; background) and of the budget's choice, and
the training seconds outside the steps (epoch ends, checkpoints, the last exchange).
Namespaces, veths and the bridge are removed on exit, on error and on Ctrl-C / SIGTERM.

``main`` is about 100 lines: one sequence of runs (one process, the namespaces, loopback) inside the network's
set-up and tear-down, which reads best in one place.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_netns_exchange():  # noqa: ANN202
    """``benchmarks/netns_exchange.py`` as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("netns_exchange", Path(__file__).with_name("netns_exchange.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nx = _load_netns_exchange()
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_commits import tree_commit  # noqa: E402  (one record of which commit's src/ ran)

HOSTS = 2


#: ``--variants``: extra ``sparsembed train`` flags of each variant (``default``: no flag, what a user gets: across
#: hosts int8, overlapped, under a byte budget; ``sync``: the defaults before that, float32 and synchronous). A
#: named variant says ``--budget`` too: the budget became a default across hosts after these names were given, and
#: a name must keep meaning the setting it measured (``benchmarks/bench_scaling.py`` models a run by its name).
VARIANTS = {"default": [], "sync": ["--values", "fp32", "--no-overlap", "--budget", "off"],
            "fp16": ["--values", "fp16", "--no-overlap", "--budget", "off"],
            "int8": ["--values", "int8", "--no-overlap", "--budget", "off"],
            "overlap": ["--overlap", "--values", "fp32", "--budget", "off"],
            "overlap-fp16": ["--overlap", "--values", "fp16", "--budget", "off"],
            "overlap-int8": ["--overlap", "--values", "int8", "--budget", "off"],
            "overlap-int8-budget": ["--overlap", "--values", "int8", "--budget", "auto"]}


def source_commit() -> str:
    """The commit whose ``src/`` ran, with ``+changes`` when ``src/`` differs from it ("unknown" outside git): the
    scaling model judges only runs of the trainer it follows."""
    head, changed = tree_commit()
    return head + ("+changes" if changed else "")


def train_netns(corpus: str, out: Path, epochs: int, job_tokens: int, timeout: float,
                extra: list[str] = (), hosts: int = HOSTS) -> tuple[float, list[str]]:
    """One training run across the namespaces; its wall seconds and the commands (for the record)."""
    port = str(29600 + os.getpid() % 1000)
    args = ["train", corpus, "--out", str(out), "--workers", "1", "--epochs", str(epochs), "--job-tokens",
            str(job_tokens), "--transport", "auto", "--quiet", *extra]
    t0 = time.perf_counter()
    _, commands = nx.torchrun_everywhere(hosts, args, port, timeout)
    return time.perf_counter() - t0, commands


def train_loopback(corpus: str, out: Path, epochs: int, job_tokens: int, timeout: float,
                   extra: list[str] = ()) -> tuple[float, list[str]]:
    cmd = [sys.executable, "-m", "sparsembed", "train", corpus, "--out", str(out), "--nproc", str(HOSTS),
           "--workers", "1", "--epochs", str(epochs), "--job-tokens", str(job_tokens), "--transport", "tcp",
           "--quiet", *extra]
    t0 = time.perf_counter()
    nx.wait_all([subprocess.Popen(cmd, env=nx.clean_env(), cwd=ROOT, text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, start_new_session=True)], timeout)
    return time.perf_counter() - t0, [".venv/bin/python " + " ".join(cmd[1:])]


def train_single(corpus: str, out: Path, epochs: int, timeout: float,
                 extra: list[str] = ()) -> tuple[float, list[str]]:
    """One process with one thread, no namespace: the run the pair must beat."""
    cmd = [sys.executable, "-m", "sparsembed", "train", corpus, "--out", str(out), "--workers", "1", "--epochs",
           str(epochs), "--quiet", *extra]
    t0 = time.perf_counter()
    nx.wait_all([subprocess.Popen(cmd, env=nx.clean_env(), cwd=ROOT, text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, start_new_session=True)], timeout)
    return time.perf_counter() - t0, [".venv/bin/python " + " ".join(cmd[1:])]


def evaluate(out: Path) -> dict:
    """Analogy (restrict_vocab 30000) and wordsim353 of the vectors in ``out``, by ``sparsembed eval``."""
    from gensim.test.utils import datapath

    result = subprocess.run([sys.executable, "-m", "sparsembed", "eval", str(out), "--analogies",
                             datapath("questions-words.txt"), "--pairs", datapath("wordsim353.tsv"),
                             "--restrict-vocab", "30000"], capture_output=True, text=True, check=True)
    scores = json.loads(result.stdout)
    return {"analogy_pct": round(scores["analogies"]["accuracy_pct"], 2),
            "ws353": round(next(iter(scores["pairs"].values()))["spearman"], 4)}


def training_seconds(metrics: Path) -> float | None:
    """Seconds from the start of training to the last progress record of a run's metrics.jsonl."""
    last = None
    for line in metrics.read_text().splitlines():
        if '"elapsed_s"' in line:
            last = json.loads(line)["elapsed_s"]
    return last


def summarize(metrics: Path) -> dict:
    """The figures of one run from rank 0's metrics.jsonl."""
    steps, words = [], None
    for line in metrics.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if "step" in rec:
            steps.append(rec)
        if "words_per_s" in rec:
            words = rec["words_per_s"]
    if not steps:
        raise RuntimeError(f"{metrics}: no step records")
    compute = [r["compute_s"] for r in steps]
    exch = [r["exchange_s"] for r in steps]
    encodings = sorted({m["encoding"] for r in steps for m in r["matrices"].values()})
    per_matrix = {}
    # an overlapped step records the exchange that landed in it, so the first step has none: every step that has one
    for name in sorted({name for r in steps for name in r["matrices"]}):
        mine = [r["matrices"][name] for r in steps if name in r["matrices"]]
        per_matrix[name] = {
            "median_mb_sent": round(statistics.median(m["bytes_sent"] for m in mine) / 1e6, 2),
            "median_density": round(statistics.median(m["density"] for m in mine), 3),
            "median_s": round(statistics.median(m["seconds"] for m in mine), 4),
            "encodings": sorted({m["encoding"] for m in mine}),
            "median_phases_s": {phase: round(statistics.median(m.get("phases", {}).get(phase, 0.0) for m in mine), 4)
                                for phase in sorted({k for m in mine for k in m.get("phases", {})})},
        }
    train_s = training_seconds(metrics)
    return {
        "train_s": train_s,  # wall_s - train_s: the start (launch, scan) and the end (outputs)
        "steps": len(steps),
        "median_compute_s": round(statistics.median(compute), 4),
        "median_exchange_s": round(statistics.median(exch), 4),
        "mean_compute_s": round(statistics.fmean(compute), 4),
        "mean_exchange_s": round(statistics.fmean(exch), 4),
        "median_choose_s": round(statistics.median(r.get("choose_s", 0.0) for r in steps), 4),
        # training's seconds outside its steps' compute and exchange: epoch ends, checkpoints, the first step's set-up
        "outside_steps_s": round(train_s - sum(compute) - sum(exch), 3) if train_s is not None else None,
        "exchange_share": round(sum(exch) / max(sum(compute) + sum(exch), 1e-9), 4),
        "median_mb_sent_per_step": round(statistics.median(r["bytes_sent"] for r in steps) / 1e6, 2),
        "mean_mb_sent_per_step": round(sum(r["bytes_sent"] for r in steps) / len(steps) / 1e6, 2),
        "words_per_s": words,
        "encodings": encodings,
        "matrices": per_matrix,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True, help="text corpus, the same path for both ranks")
    ap.add_argument("--job-tokens", type=int, nargs="+", default=[250000, 1000000])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1, help="runs of every setup and J, interleaved (1)")
    ap.add_argument("--variants", nargs="+", default=["default"],
                    help="default (no exchange flag), sync (float32, synchronous), fp16 / int8 (--values), overlap "
                         "(--overlap), overlap-fp16, overlap-int8, or a name given by --flags")
    ap.add_argument("--flags", action="append", default=[], metavar="NAME=FLAGS",
                    help="a variant of its own: NAME=\"--budget 4 --values fp16\" (repeatable)")
    ap.add_argument("--single", action="store_true", help="also time one process with one thread, each repeat")
    ap.add_argument("--seed", type=int, default=None, help="--seed of every training run (the package's default)")
    ap.add_argument("--eval", action="store_true", help="score every run's vectors (analogy, wordsim353)")
    ap.add_argument("--hosts", type=int, default=HOSTS, help=f"namespaces, one rank each ({HOSTS})")
    ap.add_argument("--rate", default="1gbit", help="each veth end's tc tbf rate (1gbit; e.g. 10gbit)")
    ap.add_argument("--no-loopback", action="store_true", help="skip the loopback (--nproc 2 --transport tcp) runs")
    ap.add_argument("--workdir", default=None, help="where the runs' --out directories go (a temporary one)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds for one training run")
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    ap.add_argument("--cleanup", action="store_true", help="only remove what an earlier run left")
    args = ap.parse_args(argv)
    seed = ["--seed", str(args.seed)] if args.seed is not None else []
    variants = {name: [*flags, *seed] for name, flags in VARIANTS.items()}
    for given in args.flags:
        name, sep, flags = given.partition("=")
        if not sep or not name:
            ap.error(f"--flags wants NAME=FLAGS, got {given!r}")
        variants[name] = [*flags.split(), *seed]
    unknown = [v for v in args.variants if v not in variants]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}: one of {', '.join(sorted(variants))}")
    if os.geteuid() != 0:
        ap.error("needs root (ip netns, tc)")
    if args.cleanup:
        nx.cleanup()
        return 0
    nx.TBF[nx.TBF.index("rate") + 1] = args.rate
    corpus = str(Path(args.corpus).resolve())
    work = Path(args.workdir or tempfile.mkdtemp(prefix="netns_w2v_", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": source_commit(),
                     "corpus": corpus, "epochs": args.epochs, "cores": os.cpu_count(), "runs": []}
    ok = True
    try:
        with nx.network(args.hosts):
            results["link_mbit_s"] = round(nx.link_check(), 1)
            print(f"link {results['link_mbit_s']:.0f} Mbit/s (one TCP stream)", flush=True)
            for rep, j, v in ((rep, j, v) for rep in range(args.repeats) for j in args.job_tokens
                              for v in args.variants):
                if args.single and j == args.job_tokens[0] and v == args.variants[0]:
                    out = work / f"single-r{rep}"
                    shutil.rmtree(out, ignore_errors=True)
                    wall, commands = train_single(corpus, out, args.epochs, args.timeout, seed)
                    res = {"setup": "one process, 1 thread", "repeat": rep, "wall_s": round(wall, 1),
                           "train_s": training_seconds(out / "metrics.jsonl"), "commands": commands,
                           **(evaluate(out) if args.eval else {})}
                    results["runs"].append(res)
                    print(json.dumps({k: v for k, v in res.items() if k != "commands"}), flush=True)
                out = work / f"netns-j{j}-{v}-r{rep}"
                shutil.rmtree(out, ignore_errors=True)
                wall, commands = train_netns(corpus, out, args.epochs, j, args.timeout, variants[v], args.hosts)
                hosts = "" if args.hosts == HOSTS else f" x{args.hosts}"
                res = {"setup": f"netns {args.rate}{hosts}, auto, {v}", "hosts": args.hosts, "job_tokens": j,
                       "repeat": rep, "variant": v,
                       "flags": variants[v], "wall_s": round(wall, 1), "commands": commands,
                       **summarize(out / "metrics.jsonl"), **(evaluate(out) if args.eval else {})}
                res["shm_used"] = "shm" in res["encodings"]
                ok &= not res["shm_used"]
                results["runs"].append(res)
                print(json.dumps({k: v for k, v in res.items() if k != "commands"}), flush=True)
    except KeyboardInterrupt:
        print("netns_word2vec: interrupted; namespaces removed", file=sys.stderr)
        return 130
    if not args.no_loopback:
        for rep, j, v in ((rep, j, v) for rep in range(args.repeats) for j in args.job_tokens for v in args.variants):
            out = work / f"loopback-j{j}-{v}-r{rep}"
            shutil.rmtree(out, ignore_errors=True)
            wall, commands = train_loopback(corpus, out, args.epochs, j, args.timeout, variants[v])
            res = {"setup": f"loopback, tcp, {v}", "job_tokens": j, "repeat": rep, "variant": v,
                   "wall_s": round(wall, 1),
                   "commands": commands, **summarize(out / "metrics.jsonl")}
            results["runs"].append(res)
            print(json.dumps({k: v for k, v in res.items() if k != "commands"}), flush=True)
    print(f"{'setup':<34} {'J':>8} {'steps':>5} {'compute':>8} {'exchange':>8} {'share':>6} {'MB/step':>8} "
          f"{'words/s':>8}")
    for r in results["runs"]:
        if "steps" not in r:  # the single process
            print(f"{r['setup']:<34} {'':>8} {'':>5} {'':>8} {'':>8} {'':>6} {'':>8} {'':>8}  wall {r['wall_s']} s"
                  + (f"  analogy {r['analogy_pct']}% ws353 {r['ws353']}" if "ws353" in r else ""))
            continue
        print(f"{r['setup']:<34} {r['job_tokens']:>8} {r['steps']:>5} {r['median_compute_s']:>8.3f} "
              f"{r['median_exchange_s']:>8.3f} {r['exchange_share']:>6.1%} {r['median_mb_sent_per_step']:>8.1f} "
              f"{(r['words_per_s'] or 0) / 1e6:>7.2f}M  wall {r['wall_s']} s"
              + (f"  analogy {r['analogy_pct']}% ws353 {r['ws353']}" if "ws353" in r else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if not ok:
        print("netns_word2vec: shared memory was used across namespaces", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
