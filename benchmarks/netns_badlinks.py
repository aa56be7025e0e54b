"""Data-parallel word2vec across 2 hosts (network namespaces) over bad links: loss, latency, a cut mid-run.

    xz -dc /work/shared/data/wiki1m.txt.xz > /tmp/badlinks/wiki1m.txt
    sudo .venv/bin/python benchmarks/netns_badlinks.py --corpus /tmp/badlinks/wiki1m.txt \\
        --json benchmarks/results/netns_badlinks.json

Root only. Builds 2 "hosts" with ``benchmarks/netns_exchange.py`` (namespaces ``sxl0``, ``sxl1`` on the bridge
``sxlbr``: its helpers under the prefix ``--prefix``, default ``sxl`` so that a concurrent ``netns_word2vec.py``
run, whose cleanup removes every ``sxe*`` namespace, is not disturbed; every veth end under ``tc tbf rate 1gbit``)
and runs in each namespace, as ``benchmarks/netns_word2vec.py`` does::

    GLOO_SOCKET_IFNAME=sxl{i}n torchrun --nnodes 2 --nproc-per-node 1 --node-rank i --master-addr 10.77.0.1 \\
        --master-port P -m sparsembed train CORPUS --out OUT --workers 1 --epochs E --job-tokens 50000 \\
        --transport auto --quiet --checkpoint-every 1 --timeout 20

with the defaults of ranks on different hosts (``--values int8 --overlap``, static balance: deterministic). Runs
(``--runs``, in this order by default):

1. ``clean``: the undisturbed link (and ``clean-repeat``: the same again, to show the run is reproducible);
2. ``loss``: 1% of the packets each end of host 1's veth sends are dropped (1% lost each way; see :func:`impair`);
3. ``delay``: every frame to and from host 1 held 50 ms (100 ms round trip; see :func:`delayed`);
4. ``cut``: once a checkpoint exists (``OUT/model/state.json``) and ``--cut-after`` seconds have passed,
   ``ip link set sxl1n down`` in host 1 (both ends of its veth lose carrier). The script keeps every rank's stderr
   with times and each torchrun's exit code; ``--cut-wait`` seconds after the cut, the ranks still running are
   sent SIGUSR1 (``faulthandler`` prints their Python stacks) and killed. Then it checks that
   ``OUT/model/state.json`` is there and ``OUT/vectors.bin`` is not, brings the link back up, and runs
   ``torchrun ... -m sparsembed train --resume OUT --workers 1 --quiet --checkpoint-every 1 --timeout 20`` in the
   same namespaces (``resume-after-cut``);
5. ``clean-sync`` and ``cut-sync``: the same with ``--no-overlap`` (int8, synchronous steps; passed to the resume
   too), and ``clean-fp32`` / ``cut-fp32`` with ``--no-overlap --values fp32``: a checkpoint of ``--overlap`` lacks
   the step in flight (RELIABILITY.md, "Checkpoint while an exchange is in flight"), and one of int8 the residuals
   pending then (error feedback, ``dataparallel/trainer.py``), so only the float32 synchronous resume can be exact.

This kernel has no ``netem`` (``CONFIG_NET_SCH_NETEM`` is not set; nor ``fq``, ``gact``), so ``tc qdisc ... netem
loss 1%`` / ``delay 50ms`` are emulated: the loss by ``htb`` at the root of both ends of host 1's veth, a classic BPF
filter (``ld rand``) sending 1% of the packets to a ``pfifo limit 0`` class and the rest to the same 1 Gbit/s tbf;
the delay by a forwarder in the root namespace that holds every frame between host 1's veth (taken off the bridge)
and a new veth on the bridge for 50 ms (AF_PACKET sockets with virtio-net headers, so GSO packets pass whole; the
tbf of both ends stays). Before each run, UDP echoes from host 0 to host 1 (``ping``: 300 at 5 ms intervals; the
machine has no ``ping``) and one TCP stream (``link_mbit_s``, 32 MB) measure the link as the run sees it.

Every run's ``vectors.bin`` is compared with its clean run's (``clean``, or ``clean-sync``): SHA-256, and the
largest absolute difference of the vectors (``sparsembed.word2vec.formats.read_word2vec``) when the bytes differ.
Every run records its wall time (whole command: torchrun start, vocabulary scan, training, outputs) and
``train_elapsed_s`` (the training alone, from ``metrics.jsonl``). The clean, ``loss`` and ``delay`` runs also
report the figures of ``netns_word2vec.summarize`` (steps, exchange share, words/s).
Namespaces, veths and the bridge are removed on exit, on error and on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):  # noqa: ANN202
    """``benchmarks/NAME.py`` as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nw = _load("netns_word2vec")
nx = nw.nx  # netns_exchange, as netns_word2vec uses it
HOSTS = 2
FAULTY = 1  # the host whose link goes bad


def use_prefix(prefix: str) -> None:
    """Name the namespaces, veths and bridge ``{prefix}0``, ``{prefix}0n``, ``{prefix}br`` ..."""
    nx.PREFIX, nx.BRIDGE = prefix, f"{prefix}br"


def veth_ends(i: int) -> tuple[list[list[str]], list[str]]:
    """The two ends of host i's veth, as ``ip netns exec NS`` prefixes + device: inner (what it sends), outer (what
    it receives)."""
    return [["ip", "netns", "exec", nx.ns(i), "tc"], ["tc"]], [f"{nx.ns(i)}n", f"{nx.ns(i)}h"]


def _loss_filter(percent: float) -> str:
    """Classic BPF for ``tc filter ... bpf bytecode``: a random u32 (``ld rand``) below ``percent``% of 2^32 goes
    to class 1:2, the rest to 1:1."""
    below = int(percent / 100 * 2**32)
    rand = 0xFFFFF000 + 56  # SKF_AD_OFF + SKF_AD_RANDOM
    return f"4,32 0 0 {rand},53 0 1 {below},6 0 0 {0x10001},6 0 0 {0x10002}"


def impair(i: int, loss_pct: float | None) -> None:
    """Drop ``loss_pct``% of what both ends of host i's veth send (None: back to the plain tbf).

    This kernel has no netem (``CONFIG_NET_SCH_NETEM`` is not set), so: ``htb`` at the root, a classic-BPF filter
    that sends a random ``loss_pct``% of the packets to class 1:2, whose ``pfifo limit 0`` drops them, and the
    rest to class 1:1, whose leaf is the same 1 Gbit/s tbf as before. A packet is an skb: a GSO packet (up to 64 KB
    of TCP segments on a veth) is dropped whole, as netem would."""
    tcs, devs = veth_ends(i)
    for tc, dev in zip(tcs, devs, strict=True):
        nx.sh(*tc, "qdisc", "del", "dev", dev, "root", check=False)
        if loss_pct is None:
            nx.sh(*tc, "qdisc", "add", "dev", dev, "root", *nx.TBF)
            continue
        nx.sh(*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1", "r2q", "10000")
        for cls in ("1:1", "1:2"):
            nx.sh(*tc, "class", "add", "dev", dev, "parent", "1:", "classid", cls, "htb", "rate", "10gbit")
        nx.sh(*tc, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *nx.TBF)
        nx.sh(*tc, "qdisc", "add", "dev", dev, "parent", "1:2", "handle", "20:", "pfifo", "limit", "0")
        nx.sh(*tc, "filter", "add", "dev", dev, "parent", "1:", "prio", "1", "bpf", "bytecode", _loss_filter(loss_pct))


_FORWARDER = """
import heapq, random, select, socket, sys, time
ETH_P_ALL, SOL_PACKET, PACKET_VNET_HDR, PACKET_OUTGOING = 3, 263, 15, 4
a, b, delay, loss = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
socks = []
for dev in (a, b):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)  # keep GSO / checksum offload metadata across the hop
    s.bind((dev, ETH_P_ALL)); s.setblocking(False); socks.append(s)
other = {socks[0]: socks[1], socks[1]: socks[0]}
queue, n, sent = [], 0, 0
print("ready", flush=True)
while True:
    wait = max(0.0, queue[0][0] - time.monotonic()) if queue else 1.0
    ready, _, _ = select.select(socks, [], [], wait)
    for s in ready:
        while True:
            try:
                data, addr = s.recvfrom(1 << 18)
            except BlockingIOError:
                break
            if addr[2] == PACKET_OUTGOING or (loss and random.random() < loss):
                continue
            n += 1
            heapq.heappush(queue, (time.monotonic() + delay, n, other[s], data))
    now = time.monotonic()
    while queue and queue[0][0] <= now:
        _, _, dst, data = heapq.heappop(queue)
        try:
            dst.send(data)
        except OSError:
            pass
"""


@contextlib.contextmanager
def delayed(i: int, ms: float):  # noqa: ANN201
    """Host i's link ``ms`` longer each way: its veth's outer end leaves the bridge, and a forwarder (AF_PACKET
    sockets with virtio-net headers) holds every frame between it and a new veth ``{ns}d``/``{ns}e`` on the bridge
    for ``ms`` milliseconds, both ways. (No netem in this kernel, no fq for BPF departure times.)"""
    outer, port, hop = f"{nx.ns(i)}h", f"{nx.ns(i)}d", f"{nx.ns(i)}e"
    nx.sh("ip", "link", "add", port, "type", "veth", "peer", "name", hop)
    nx.sh("ip", "link", "set", outer, "nomaster")
    nx.sh("ip", "link", "set", port, "master", nx.BRIDGE)
    for dev in (port, hop):
        nx.sh("ip", "link", "set", dev, "up")
    fwd = subprocess.Popen([sys.executable, "-c", _FORWARDER, outer, hop, str(ms / 1e3), "0"],
                           stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert fwd.stdout is not None and fwd.stdout.readline().strip() == "ready"
        yield
    finally:
        if fwd.poll() is None:
            os.killpg(fwd.pid, signal.SIGKILL)
        fwd.wait()
        nx.sh("ip", "link", "del", port, check=False)
        nx.sh("ip", "link", "set", outer, "master", nx.BRIDGE)


def loss_counts(i: int) -> list[dict]:
    """Per end of host i's veth under :func:`impair`: packets the htb passed on (GSO segments counted one by one)
    and skbs the ``pfifo limit 0`` class dropped."""
    counts = []
    for tc, dev in zip(*veth_ends(i), strict=True):
        text = nx.sh(*tc, "-s", "qdisc", "show", "dev", dev).stdout
        sent = re.search(r"qdisc htb 1:.*?Sent (\d+) bytes (\d+) pkt", text, re.S)
        dropped = re.search(r"qdisc pfifo 20:.*?dropped (\d+)", text, re.S)
        counts.append({"bytes_sent": int(sent.group(1)), "packets_sent": int(sent.group(2)),
                       "skbs_dropped": int(dropped.group(1))})
    return counts


def qdiscs(i: int) -> list[str]:
    tcs, devs = veth_ends(i)
    return [nx.sh(*tc, "qdisc", "show", "dev", dev).stdout.strip() for tc, dev in zip(tcs, devs, strict=True)]


_UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
print("ready", flush=True)
try:
    while True:
        data, addr = s.recvfrom(64); s.sendto(data, addr)
except TimeoutError:
    pass
"""
_UDP_PROBE = """
import json, socket, struct, sys, time
n, interval = int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setblocking(False); addr = (sys.argv[1], int(sys.argv[2]))
sent, rtts, i = {}, [], 0
end = time.perf_counter() + n * interval + 1.0
while time.perf_counter() < end:
    now = time.perf_counter()
    if i < n and now >= i * interval + (end - n * interval - 1.0):
        sent[i] = now; s.sendto(struct.pack("!I", i), addr); i += 1
    try:
        data = s.recv(64)
        rtts.append(time.perf_counter() - sent[struct.unpack("!I", data)[0]])
    except BlockingIOError:
        time.sleep(0.0005)
print(json.dumps({"count": n, "loss_pct": round(100 * (n - len(rtts)) / n, 2),
                  "rtt_min_ms": round(1e3 * min(rtts), 2) if rtts else None,
                  "rtt_avg_ms": round(1e3 * sum(rtts) / len(rtts), 2) if rtts else None,
                  "rtt_max_ms": round(1e3 * max(rtts), 2) if rtts else None}))
"""


def ping(count: int = 300, interval: float = 0.005) -> dict:
    """UDP round trips from host 0 to host 1 (no ``ping`` on this machine): loss % and rtt min/avg/max ms."""
    port = "5298"
    server = subprocess.Popen(["ip", "netns", "exec", nx.ns(1), sys.executable, "-c", _UDP_ECHO, f"{nx.SUBNET}.2",
                               port, "3"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        out = nx.sh("ip", "netns", "exec", nx.ns(0), sys.executable, "-c", _UDP_PROBE, f"{nx.SUBNET}.2", port,
                    str(count), str(interval)).stdout
        return json.loads(out)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def link_up(i: int, up: bool) -> None:
    nx.sh("ip", "netns", "exec", nx.ns(i), "ip", "link", "set", f"{nx.ns(i)}n", "up" if up else "down")


class Ranks:
    """``torchrun ... -m sparsembed ARGS`` as one rank in every namespace (as ``netns_exchange.torchrun_everywhere``
    starts them), every output line kept with the monotonic time it arrived."""

    def __init__(self, sparsembed_args: list[str], port: int) -> None:
        torchrun = str(ROOT / ".venv" / "bin" / "torchrun")
        self.procs, self.commands, self.lines, self.exited = [], [], [], [None] * HOSTS
        self.t0 = time.monotonic()
        self._readers = []
        for i in range(HOSTS):
            cmd = [torchrun, "--nnodes", str(HOSTS), "--nproc-per-node", "1", "--node-rank", str(i),
                   "--master-addr", f"{nx.SUBNET}.1", "--master-port", str(port), "-m", "sparsembed",
                   *sparsembed_args]
            env = {**nx.clean_env(), "GLOO_SOCKET_IFNAME": f"{nx.ns(i)}n"}
            p = subprocess.Popen(["ip", "netns", "exec", nx.ns(i), *cmd], env=env, cwd=ROOT, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
            self.procs.append(p)
            self.commands.append(f"ip netns exec {nx.ns(i)} env GLOO_SOCKET_IFNAME={nx.ns(i)}n "
                                 + " ".join([".venv/bin/torchrun", *cmd[1:]]))
            for name, stream in (("stdout", p.stdout), ("stderr", p.stderr)):
                t = threading.Thread(target=self._read, args=(i, name, stream), daemon=True)
                t.start()
                self._readers.append(t)

    def _read(self, host: int, name: str, stream) -> None:  # noqa: ANN001
        for line in stream:
            self.lines.append((time.monotonic() - self.t0, host, name, line.rstrip("\n")))

    def poll(self) -> bool:
        """Note exit times; True once every process has exited."""
        for i, p in enumerate(self.procs):
            if self.exited[i] is None and p.poll() is not None:
                self.exited[i] = time.monotonic() - self.t0
        return all(e is not None for e in self.exited)

    def wait(self, timeout: float, during=None) -> None:  # noqa: ANN001
        """Until every process exits or ``timeout`` seconds from the start (then kill what is left);
        ``during(self)`` is called every 50 ms meanwhile, and stops the wait by returning True."""
        try:
            while not self.poll() and time.monotonic() - self.t0 < timeout:
                if during is not None and during(self):
                    break
                time.sleep(0.05)
        finally:
            self.kill()

    def kill(self) -> None:
        self.killed = [p.poll() is None for p in self.procs]
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for t in self._readers:
            t.join(timeout=5)

    def record(self) -> dict:
        self.poll()
        return {"wall_s": round(max(e or 0 for e in self.exited), 2),
                "exit_codes": [p.returncode for p in self.procs],
                "exited_at_s": [None if e is None else round(e, 2) for e in self.exited],
                "killed_by_script": self.killed,
                "commands": self.commands}

    def dump_stacks(self) -> list[int]:
        """``kill -USR1`` every sparsembed rank (not torchrun) still running in a namespace whose torchrun is still
        running: the rank prints its Python stack to stderr (``faulthandler``); the pids signalled."""
        pids = []
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                continue
            for pid in nx.sh("ip", "netns", "pids", nx.ns(i), check=False).stdout.split():
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    if b"sparsembed" in cmd and not any(b"torchrun" in c for c in cmd):
                        os.kill(int(pid), signal.SIGUSR1)
                        pids.append(int(pid))
        return pids

    def stderr(self, host: int, after: float = 0.0) -> list[tuple[float, str]]:
        return [(t, line) for t, h, name, line in self.lines if h == host and name == "stderr" and t >= after]


def sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def compare(path: Path, base: Path) -> dict:
    """``path``'s vectors.bin against ``base``'s: identical bytes, or the largest absolute difference."""
    from sparsembed.word2vec.formats import read_word2vec

    a, b = path / "vectors.bin", base / "vectors.bin"
    if not a.exists() or not b.exists():
        return {"vectors_written": a.exists()}
    res: dict = {"vectors_written": True, "vectors_sha256": sha256(a)}
    res["identical_to_clean"] = a.read_bytes() == b.read_bytes()
    if not res["identical_to_clean"]:
        wa, ma = read_word2vec(a)
        wb, mb = read_word2vec(b)
        res["same_words"] = wa == wb
        if wa == wb:
            diff = np.abs(ma.astype(np.float64) - mb.astype(np.float64))
            res["max_abs_diff"] = float(diff.max())
            res["mean_abs_diff"] = float(diff.mean())
            res["rows_differing"] = int((diff.max(axis=1) > 0).sum())
            res["rows"] = int(len(wa))
            res["max_abs_value"] = float(np.abs(mb).max())
            cos = (ma * mb).sum(1) / np.maximum(np.linalg.norm(ma, axis=1) * np.linalg.norm(mb, axis=1), 1e-12)
            res["min_row_cosine"] = float(cos.min())
    return res


def train_seconds(metrics: Path) -> float | None:
    """``elapsed_s`` of the last progress record: the training itself (of the last attempt, after a resume)."""
    last = None
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            if '"elapsed_s"' in line:
                last = json.loads(line)["elapsed_s"]
    return last


def checkpoint_info(out: Path) -> dict:
    state = out / "model" / "state.json"
    res: dict = {"state_json_exists": state.exists(), "vectors_bin_exists": (out / "vectors.bin").exists()}
    if state.exists():
        meta = json.loads(state.read_text())
        res["checkpoint"] = {"generation": meta.get("generation"),
                             "position": meta.get("meta", {}).get("position")}
    return res


#: name: (host 1's link: loss % or delay ms, extra ``sparsembed train`` flags, the clean run to compare with)
RUNS = {
    "clean": (None, [], "clean"),
    "clean-repeat": (None, [], "clean"),
    "loss": (("loss", 1.0), [], "clean"),
    "delay": (("delay", 50.0), [], "clean"),
    "cut": (None, [], "clean"),  # and its resume
    "clean-sync": (None, ["--no-overlap"], "clean-sync"),  # the synchronous exchange, whose resume is exact
    "cut-sync": (None, ["--no-overlap"], "clean-sync"),
    "clean-fp32": (None, ["--no-overlap", "--values", "fp32"], "clean-fp32"),  # no error feedback either
    "cut-fp32": (None, ["--no-overlap", "--values", "fp32"], "clean-fp32"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True, help="text corpus, the same path for both ranks")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--job-tokens", type=int, default=50000)
    ap.add_argument("--checkpoint-every", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=20.0, help="sparsembed train --timeout (20)")
    ap.add_argument("--cut-after", type=float, default=0.0,
                    help="seconds from the start before the cut, which also waits for the first checkpoint (0)")
    ap.add_argument("--cut-wait", type=float, default=60.0,
                    help="seconds after the cut before the ranks still running are asked for their stacks "
                         "(kill -USR1) and killed (60)")
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS),
                    help="in this order; a run's clean baseline runs first when missing")
    ap.add_argument("--run-timeout", type=float, default=600.0, help="seconds before a run is killed (600)")
    ap.add_argument("--prefix", default="sxl", help="namespace / device prefix (sxl)")
    ap.add_argument("--workdir", default=None, help="where the runs' --out directories go (a temporary one)")
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    ap.add_argument("--cleanup", action="store_true", help="only remove what an earlier run left")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root (ip netns, tc)")
    use_prefix(args.prefix)
    if args.cleanup:
        nx.cleanup()
        return 0
    corpus = str(Path(args.corpus).resolve())
    work = Path(args.workdir or tempfile.mkdtemp(prefix="netns_badlinks_", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    train = ["--workers", "1", "--epochs", str(args.epochs), "--job-tokens", str(args.job_tokens), "--transport",
             "auto", "--quiet", "--checkpoint-every", str(args.checkpoint_every), "--timeout", str(args.timeout)]
    results: dict = {"started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "corpus": corpus,
                     "cores": os.cpu_count(), "train_args": train, "faulty_host": FAULTY, "runs": {}}
    runs: list[str] = []
    for name in args.runs:
        for r in (RUNS[name][2], name):
            if r not in runs:
                runs.append(r)
    port = 31000 + os.getpid() % 500

    try:
        with nx.network(HOSTS):
            results["link_mbit_s"] = round(nx.link_check(), 1)
            print(f"link {results['link_mbit_s']:.0f} Mbit/s (one TCP stream)", flush=True)
            for name in runs:
                port += 2
                netem, extra, base = RUNS[name]
                out = work / name
                shutil.rmtree(out, ignore_errors=True)
                if name.startswith("cut"):
                    cut, resume = cut_and_resume(args, corpus, [*train, *extra], extra, out, work / base, port)
                    results["runs"][name] = cut
                    results["runs"][f"resume-after-{name}"] = resume
                    continue
                with contextlib.ExitStack() as stack:
                    if netem and netem[0] == "loss":
                        impair(FAULTY, netem[1])
                        stack.callback(impair, FAULTY, None)
                    elif netem:
                        stack.enter_context(delayed(FAULTY, netem[1]))
                    res: dict = {"impairment": netem, "extra_args": extra, "qdiscs_host1": qdiscs(FAULTY),
                                 "ping": ping(), "link_mbit_s": round(nx.link_check(32), 1)}
                    before = loss_counts(FAULTY) if netem and netem[0] == "loss" else None
                    ranks = Ranks(["train", corpus, "--out", str(out), *train, *extra], port)
                    ranks.wait(args.run_timeout)
                    if before is not None:  # what each end sent and dropped during the training run alone
                        after = loss_counts(FAULTY)
                        res["during_run_host1_ends"] = [
                            {k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
                res.update(ranks.record())
                res["ok"] = res["exit_codes"] == [0, 0]
                if not res["ok"]:
                    res["stderr_tail"] = [[h, line] for _, h, s, line in ranks.lines if s == "stderr"][-20:]
                else:
                    res.update(nw.summarize(out / "metrics.jsonl"))
                    res["shm_used"] = "shm" in res["encodings"]
                    res.pop("matrices", None)
                res["train_elapsed_s"] = train_seconds(out / "metrics.jsonl")
                res["compared_with"] = base
                res.update(compare(out, work / base))
                results["runs"][name] = res
                print(json.dumps({"run": name, **{k: v for k, v in res.items() if k != "commands"}}), flush=True)
    except KeyboardInterrupt:
        print("netns_badlinks: interrupted; namespaces removed", file=sys.stderr)
        return 130
    finally:
        results["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"{'run':<20} {'wall s':>7} {'train s':>7} {'exit':>8} {'vectors':>30}")
    for name, r in results["runs"].items():
        same = (f"identical to {r['compared_with']}" if r.get("identical_to_clean") else
                f"max |diff| {r['max_abs_diff']:.3g}" if "max_abs_diff" in r else
                "written" if r.get("vectors_written") else "none")
        print(f"{name:<20} {r['wall_s']:>7.1f} {r.get('train_elapsed_s') or 0:>7.2f} {str(r['exit_codes']):>8} "
              f"{same:>30}")
        for host, line in enumerate(r.get("first_error_line", [])):
            print(f"  host {host}, {r['first_error_after_cut_s'][host]} s after the cut: {line}")
    return 0


def cut_and_resume(args: argparse.Namespace, corpus: str, train: list[str], extra: list[str], out: Path,
                   clean: Path, port: int) -> tuple[dict, dict]:
    """A run whose host 1 loses its link once a checkpoint exists; then, the link back, its resume."""
    state = out / "model" / "state.json"
    cut: dict = {"extra_args": extra, "cut_after_s": args.cut_after, "ping_before": ping(100),
                 "how": f"ip netns exec {nx.ns(FAULTY)} ip link set {nx.ns(FAULTY)}n down"}

    def during(ranks: Ranks) -> bool:
        now = time.monotonic() - ranks.t0
        if "cut_at_s" not in cut:
            if now >= args.cut_after and state.exists():
                link_up(FAULTY, False)
                cut["cut_at_s"] = round(time.monotonic() - ranks.t0, 2)
                cut["at_cut"] = checkpoint_info(out)
            return False
        if "stacks_asked_at_s" not in cut and now - cut["cut_at_s"] >= args.cut_wait:
            cut["stacks_asked_of_pids"] = ranks.dump_stacks()
            cut["stacks_asked_at_s"] = round(now - cut["cut_at_s"], 2)
        return "stacks_asked_at_s" in cut and now - cut["cut_at_s"] >= args.cut_wait + 3

    ranks = Ranks(["train", corpus, "--out", str(out), *train], port)
    try:
        ranks.wait(args.run_timeout, during)
    finally:
        link_up(FAULTY, True)
    cut.update(ranks.record())
    t_cut = cut.get("cut_at_s")
    if t_cut is None:
        cut["error"] = "the run ended before the cut"
        return cut, {}
    cut["exited_after_cut_s"] = [None if e is None else round(e - t_cut, 2) for e in cut["exited_at_s"]]
    cut["stderr_after_cut"] = [[[round(t - t_cut, 2), line] for t, line in ranks.stderr(h, t_cut)]
                               for h in range(HOSTS)]
    firsts, first_t = [], []
    for h in range(HOSTS):
        lines = [(t, line) for t, line in ranks.stderr(h, t_cut) if line.startswith("sparsembed:")]
        firsts.append(lines[0][1] if lines else None)
        first_t.append(round(lines[0][0] - t_cut, 2) if lines else None)
    cut["first_error_line"], cut["first_error_after_cut_s"] = firsts, first_t
    cut.update(checkpoint_info(out))
    cut["files"] = sorted(p.name for p in out.iterdir()) if out.exists() else []
    print(json.dumps({"run": out.name, **{k: v for k, v in cut.items() if k not in ("commands", "stderr_after_cut")}}),
          flush=True)

    # the link back, then the resume in the same namespaces
    deadline = time.monotonic() + 15
    while (p := ping(5, 0.2))["loss_pct"] != 0.0 and time.monotonic() < deadline:
        time.sleep(0.5)
    resume: dict = {"ping": p}
    ranks = Ranks(["train", "--resume", str(out), "--workers", "1", "--quiet", "--checkpoint-every",
                   str(args.checkpoint_every), "--timeout", str(args.timeout), *extra], port + 1)
    ranks.wait(args.run_timeout)
    resume.update(ranks.record())
    resume["ok"] = resume["exit_codes"] == [0, 0]
    resume["stderr_tail"] = [[h, line] for _, h, s, line in ranks.lines if s == "stderr"][-20:]
    resume["train_elapsed_s"] = train_seconds(out / "metrics.jsonl")
    resume["compared_with"] = clean.name
    resume.update(compare(out, clean))
    print(json.dumps({"run": f"resume-after-{out.name}", **{k: v for k, v in resume.items() if k != "commands"}}),
          flush=True)
    return cut, resume


if __name__ == "__main__":
    raise SystemExit(main())
