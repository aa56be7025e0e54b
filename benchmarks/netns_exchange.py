"""The exchange benchmark across hosts: network namespaces on one machine, each link limited to 1 Gbit/s.

    sudo .venv/bin/python benchmarks/netns_exchange.py --hosts 2 --steps 5 --warmup 1 --densities 0.01,0.1,0.4
    sudo .venv/bin/python benchmarks/netns_exchange.py --hosts 4 --json results.json

Root only. Builds H "hosts" (2..4): network namespaces ``sxe0`` .. ``sxe{H-1}``, each with one veth (``sxe{i}n``,
address ``10.77.0.{i+1}/24``) whose peer (``sxe{i}h``) is a port of the bridge ``sxebr`` in the root namespace, so
the hosts hang off one switch. Both ends of each veth get ``tc qdisc ... root tbf rate 1gbit burst 256kb latency
50ms``: every host sends and receives at most 1 Gbit/s, the switch itself is not limited.

Then it checks the limit with a plain TCP transfer from host 0 to host 1 (``link_mbit_s``) and runs in every
namespace::

    GLOO_SOCKET_IFNAME=sxe{i}n torchrun --nnodes H --nproc-per-node 1 --node-rank i --master-addr 10.77.0.1 \\
        --master-port P -m sparsembed bench exchange --rows 200000 --dim 128 --ids 8192 ... --json

and keeps rank 0's JSON (medians over steps of the slowest rank: ``ours_ms``, ``torch_sparse_ms``, ``dense_ms``,
plus the ``sweep`` points). The dense all_reduce of the ``rows x dim`` float32 matrix must move at least
``2 (H-1)/H`` of it in and out of every host, so at 1 Gbit/s it cannot beat ``dense_floor_ms``; a dense time far
below that floor means the limit is not in force, and the script says so (``link_limit_ok``).

Everything it made (namespaces, veths, bridge, torchrun processes) is removed on exit, on error and on Ctrl-C /
SIGTERM; leftovers of a killed run (``kill -9``) are removed by the next run, or by ``--cleanup``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "sxe"
BRIDGE = f"{PREFIX}br"
SUBNET = "10.77.0"
TBF = ["tbf", "rate", "1gbit", "burst", "256kb", "latency", "50ms"]
LINK_BITS_S = 1e9

_LINK_SERVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); n = 0; t0 = None
while True:
    b = c.recv(1 << 20)
    if not b: break
    if t0 is None: t0 = time.perf_counter()
    n += len(b)
print(n, time.perf_counter() - t0, flush=True)
"""
_LINK_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2]))); buf = b"x" * (1 << 20)
for _ in range(int(sys.argv[3])): c.sendall(buf)
c.close()
"""


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one command (no shell), its output captured; a failure raises with its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def ns(i: int) -> str:
    return f"{PREFIX}{i}"


def cleanup() -> None:
    """Remove every namespace, veth and bridge this script may have made (leftovers of older runs included)."""
    names = sh("ip", "netns", "list", check=False).stdout.split()
    for name in names:
        if name.startswith(PREFIX) and name[len(PREFIX):].isdigit():
            for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():  # stray processes inside
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", name, check=False)  # takes the veth pair with it
    links = sh("ip", "-o", "link", "show", check=False).stdout.splitlines()
    for line in links:
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(PREFIX):
            sh("ip", "link", "del", name, check=False)


def build(hosts: int) -> None:
    """The namespaces, veths, bridge and 1 Gbit/s limits."""
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "link", "set", BRIDGE, "up")
    for i in range(hosts):
        name, inner, outer = ns(i), f"{ns(i)}n", f"{ns(i)}h"
        sh("ip", "netns", "add", name)
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        sh("ip", "link", "set", inner, "netns", name)
        sh("ip", "link", "set", outer, "master", BRIDGE)
        sh("ip", "link", "set", outer, "up")
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", name, "ip", "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", inner)
        sh("ip", "netns", "exec", name, "ip", "link", "set", inner, "up")
        sh("tc", "qdisc", "add", "dev", outer, "root", *TBF)  # what the host receives
        sh("ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", inner, "root", *TBF)  # what it sends


@contextlib.contextmanager
def network(hosts: int) -> Iterator[None]:
    """Build the hosts; tear them down however the block ends (SIGTERM included, turned into an exception)."""

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    cleanup()
    try:
        build(hosts)
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # do not stop half-way through the teardown
        cleanup()
        signal.signal(signal.SIGTERM, previous)


def link_check(megabytes: int = 64) -> float:
    """Mbit/s of one TCP stream from host 0 to host 1."""
    port = "5299"
    server = subprocess.Popen(["ip", "netns", "exec", ns(1), sys.executable, "-c", _LINK_SERVER, f"{SUBNET}.2",
                               port], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        sh("ip", "netns", "exec", ns(0), sys.executable, "-c", _LINK_CLIENT, f"{SUBNET}.2", port, str(megabytes))
        n, seconds = server.stdout.readline().split()
        server.wait(30)
        return int(n) * 8 / float(seconds) / 1e6
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def clean_env() -> dict[str, str]:
    """This environment without another launcher's rank variables (each torchrun sets its own)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "SPARSEMBED_SHM",
                "GLOO_SOCKET_IFNAME"):
        env.pop(var, None)
    return env


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    """(returncode, stdout, stderr) of every process within ``timeout`` seconds in all; raises if one failed.
    Whatever is still running afterwards (on error or timeout) is killed with its process group."""
    try:
        deadline = time.monotonic() + timeout
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outs.append((p.returncode, out, err))
        failed = [(i, rc, err.strip().splitlines()[-8:]) for i, (rc, _, err) in enumerate(outs) if rc != 0]
        if failed:
            raise RuntimeError(f"failed on hosts: {failed}")
        return outs
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def torchrun_everywhere(hosts: int, sparsembed_args: list[str], port: str,
                        timeout: float) -> tuple[list[tuple[int, str, str]], list[str]]:
    """``torchrun ... -m sparsembed ARGS`` as one rank in every namespace (GLOO_SOCKET_IFNAME its veth); every
    rank's (returncode, stdout, stderr) and the commands (for the record)."""
    torchrun = str(ROOT / ".venv" / "bin" / "torchrun")
    procs, commands = [], []
    for i in range(hosts):
        cmd = [torchrun, "--nnodes", str(hosts), "--nproc-per-node", "1", "--node-rank", str(i), "--master-addr",
               f"{SUBNET}.1", "--master-port", port, "-m", "sparsembed", *sparsembed_args]
        env = {**clean_env(), "GLOO_SOCKET_IFNAME": f"{ns(i)}n"}
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns(i), *cmd], env=env, cwd=ROOT, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
        commands.append(f"ip netns exec {ns(i)} env GLOO_SOCKET_IFNAME={ns(i)}n " + " ".join([
            ".venv/bin/torchrun", *cmd[1:]]))
    return wait_all(procs, timeout), commands


def run_bench(hosts: int, bench_args: list[str], timeout: float) -> tuple[dict, list[str]]:
    """Start torchrun in every namespace; rank 0's JSON, and the command of every host (for the record)."""
    port = str(29500 + os.getpid() % 1000)
    outs, commands = torchrun_everywhere(hosts, ["bench", "exchange", *bench_args, "--json"], port, timeout)
    text = outs[0][1]
    return json.loads(text[text.index("{"):]), commands


def summarize(res: dict, hosts: int, rows: int, dim: int) -> dict:
    """Ratios, and the dense floor of a 1 Gbit/s link, added to the benchmark's result."""
    matrix_bytes = rows * dim * 4
    floor_ms = 1e3 * 2 * (hosts - 1) / hosts * matrix_bytes * 8 / LINK_BITS_S
    res["dense_floor_ms"] = round(floor_ms, 1)
    res["link_limit_ok"] = res["dense_ms"] >= 0.9 * floor_ms
    res["ours_vs_torch_sparse"] = res["torch_sparse_ms"] / res["ours_ms"]
    res["ours_vs_dense"] = res["dense_ms"] / res["ours_ms"]
    for r in res.get("sweep", []):
        r["ours_vs_torch_sparse"] = r["torch_sparse_ms"] / r["ours_ms"]
        r["ours_vs_dense"] = r["dense_ms"] / r["ours_ms"]
    return res


def report(res: dict) -> str:
    lines = [f"hosts {res['nproc']}  link {res['link_mbit_s']:.0f} Mbit/s (one TCP stream)  dense floor "
             f"{res['dense_floor_ms']:.0f} ms  limit in force: {res['link_limit_ok']}",
             f"ids {res['ids']} ({res['distinct_rows']} distinct, {res['mode']}): ours {res['ours_ms']:.1f} ms  "
             f"torch sparse {res['torch_sparse_ms']:.1f} ms  dense {res['dense_ms']:.1f} ms  -> "
             f"{res['ours_vs_torch_sparse']:.2f}x vs torch sparse, {res['ours_vs_dense']:.1f}x vs dense"]
    for r in res.get("sweep", []):
        lines.append(f"density {r['density']:<5} ({r['distinct_rows']} rows, {r['mode']}): ours {r['ours_ms']:.1f} ms"
                     f"  torch sparse {r['torch_sparse_ms']:.1f} ms  dense {r['dense_ms']:.1f} ms  -> "
                     f"{r['ours_vs_torch_sparse']:.2f}x / {r['ours_vs_dense']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=2, help="network namespaces, 2..4 (2)")
    ap.add_argument("--rows", type=int, default=200000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--ids", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--values", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--densities", default="0.01,0.1,0.4", help="sweep points ('' for none)")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds for the whole benchmark run")
    ap.add_argument("--json", metavar="FILE", help="also write the result here")
    ap.add_argument("--cleanup", action="store_true", help="only remove what an earlier run left")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root (ip netns, tc)")
    if args.cleanup:
        cleanup()
        return 0
    if not 2 <= args.hosts <= 4:
        ap.error("--hosts must be 2..4")
    bench_args = ["--rows", str(args.rows), "--dim", str(args.dim), "--ids", str(args.ids), "--steps",
                  str(args.steps), "--warmup", str(args.warmup), "--values", args.values, "--timeout",
                  str(args.timeout)]
    if args.densities:
        bench_args += ["--densities", args.densities]
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        with network(args.hosts):
            mbit = link_check()
            res, commands = run_bench(args.hosts, bench_args, args.timeout)
    except KeyboardInterrupt:
        print("netns_exchange: interrupted; namespaces removed", file=sys.stderr)
        return 130
    res["link_mbit_s"] = round(mbit, 1)
    res["started"] = started
    res["commands"] = commands
    summarize(res, args.hosts, args.rows, args.dim)
    print(report(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0 if res["link_limit_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
