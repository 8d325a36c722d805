"""How much longer a live migration takes through ``qevm tap``, on loopback.

Two QEMUs (the installed one, Debian's 7.2; ``$QEVM_BENCH_QEMU`` overrides it)
migrate a paused guest (``-S``) whose RAM holds ``--size`` MiB of random bytes
over TCP on 127.0.0.1, with ``max-bandwidth`` lifted and a downtime limit so
large that the migration is one pass: the time is the time to move the data
(with ``--bandwidth`` MB/s, max-bandwidth is that and the downtime limit
1 ms, so that the data goes before the switchover, under the limit).  Both QEMUs preallocate their
RAM (``-mem-prealloc``), so that the destination's first touch of each page
of RAM, which on a virtual machine can cost more than the whole migration and
varies tenfold from run to run, is paid before the clock starts.

Each round migrates three ways, in an order that rotates: directly; through
``bench/forward.py``, a bare ``splice`` forwarder (the cost of any proxy: the
extra TCP hop); and through ``qevm tap --record DIR --json``.  The time is
QEMU's own ``total-time`` of the source's ``query-migrate``.  The tap run must
complete with the page counts QEMU reports.  Then the same with multifd
(``--channels`` channels).

Target (issue 16): through the tap at most 1.3x as long as directly, on the
median of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (
    QEMU,
    REPO,
    WORK,
    MiB,
    compile_qevm,
    qevm_env,
    warn_if_busy,
    warn_if_memory_full,
    write_random,
)

sys.path.insert(0, str(REPO / "tests"))
from qemuvm import Vm  # noqa: E402  (the tests' QMP driver)

TARGET = 1.3
OUT = WORK / "tap"
MODES = ("direct", "forwarder", "tap")
CPU = ("qemu_cpu", "proxy_cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU time of ``pid`` so far (and of its child processes)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = (int(fields[11]) + int(fields[12])) / _TICK
    if children:
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        total += sum(cpu_seconds(int(k), True) for k in kids)
    return total


def guest_files(size_mib: int) -> tuple[Path, Path]:
    """A 64 KiB BIOS (never run: the guest stays paused) and the random payload."""
    OUT.mkdir(parents=True, exist_ok=True)
    bios = OUT / "bios.bin"
    bios.write_bytes(bytes(0x10000))
    payload = OUT / f"random-{size_mib}m.bin"
    if not payload.exists() or payload.stat().st_size != size_mib * MiB:
        write_random(payload, size_mib * MiB)
    return bios, payload


def argv(size_mib: int, bios: Path, payload: Path) -> list[str]:
    mem = size_mib + 256
    return [
        *("-machine", "pc,accel=tcg", "-m", str(mem), "-nodefaults", "-display", "none"),
        *("-bios", str(bios), "-S", "-mem-prealloc"),
        *("-device", f"loader,file={payload},addr=0x10000000"),
    ]


def start_tap(rec: Path, dport: int) -> tuple[subprocess.Popen, int]:
    """``qevm tap`` recording to ``rec``, forwarding to ``dport``; and its port."""
    tap = subprocess.Popen(
        [
            *(sys.executable, "-m", "qevm", "tap", "--json", "--record", str(rec)),
            *("--listen", "127.0.0.1:0", "--to", f"127.0.0.1:{dport}"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=qevm_env(),
    )
    assert tap.stdout is not None
    return tap, json.loads(tap.stdout.readline())["listen"][1]


def start_forwarder(dport: int) -> tuple[subprocess.Popen, int]:
    """``bench/forward.py`` forwarding to ``dport``; and its port."""
    port = free_port()
    fwd = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("forward.py")), str(port), str(dport)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert fwd.stdout is not None and fwd.stdout.readline().strip() == "ready"
    return fwd, port


def migrate(qemu: str, args: list[str], channels: int, mode: str, bandwidth: int) -> dict:
    """One migration ``mode``; QEMU's query-migrate, and the tap's summary."""
    dport = free_port()
    rec = OUT / "rec"
    shutil.rmtree(rec, ignore_errors=True)
    OUT.joinpath("vm").mkdir(exist_ok=True)
    proxy = None
    with (
        Vm(qemu, [*args, "-incoming", f"tcp:127.0.0.1:{dport}"], OUT / "vm", "dst") as dst,
        Vm(qemu, args, OUT / "vm", "src") as src,
    ):
        if channels:
            for vm in (src, dst):
                caps = [{"capability": "multifd", "state": True}]
                vm.cmd("migrate-set-capabilities", capabilities=caps)
                vm.cmd("migrate-set-parameters", **{"multifd-channels": channels})
        # QEMU lifts max-bandwidth for the switchover: so under a limit, a downtime
        # limit so small that everything goes before it, at the rate limited
        limits = {
            "max-bandwidth": bandwidth or 1 << 40,
            "downtime-limit": 1 if bandwidth else 600000,
        }
        src.cmd("migrate-set-parameters", **limits)
        port = dport
        if mode == "tap":
            proxy, port = start_tap(rec, dport)
        elif mode == "forwarder":
            proxy, port = start_forwarder(dport)
        subprocess.run(["sync"], check=False)
        pids = [src.proc.pid, dst.proc.pid]
        qemu0 = sum(map(cpu_seconds, pids))
        proxy0 = cpu_seconds(proxy.pid, True) if proxy is not None else 0.0
        t0 = time.perf_counter()
        src.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        while (query := src.cmd("query-migrate"))["status"] not in ("completed", "failed"):
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        qemu_cpu = sum(map(cpu_seconds, pids)) - qemu0
        proxy_cpu = cpu_seconds(proxy.pid, True) - proxy0 if proxy is not None else 0.0
        assert query["status"] == "completed", query
        dst.wait_migration(300)  # the destination has loaded it all
    out = {"query": query, "wall": wall, "qemu_cpu": qemu_cpu, "proxy_cpu": proxy_cpu}
    if proxy is not None:
        lines = proxy.communicate(timeout=300)[0].splitlines()
        if mode == "tap":
            out["summary"] = json.loads(lines[-1])
            out["tap_rc"] = proxy.returncode
    shutil.rmtree(rec, ignore_errors=True)
    return out


def run(qemu: str, size: int, channels: int, rounds: int, bandwidth: int) -> dict[str, list[dict]]:
    """``rounds`` migrations each way; per mode: time (ms) and CPU seconds of each."""
    bios, payload = guest_files(size)
    args = argv(size, bios, payload)
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    label = f"multifd x{channels}" if channels else "single connection"
    for i in range(rounds):
        for mode in MODES[i % 3 :] + MODES[: i % 3]:
            r = migrate(qemu, args, channels, mode, bandwidth)
            # QEMU's own measure; 7.2 sometimes reports 0 for a migration that
            # ends within its first iteration: then the time polled here
            r["ms"] = r["query"]["total-time"] or round(r["wall"] * 1000)
            if mode == "tap":
                s, ram = r["summary"], r["query"]["ram"]
                ok = (
                    r["tap_rc"] == 0
                    and s["status"] == "completed"
                    and s["pages"]["normal"] == ram["normal"]
                    and s["pages"]["zero"] == ram["duplicate"]
                )
                if not ok:
                    raise SystemExit(f"tap run wrong: {s.get('status')} {s.get('pages')} {ram}")
            runs[mode].append(r)
            print(
                f"  {label:18} round {i + 1:2}  {mode:9}  {r['ms']:6d} ms  "
                f"QEMU CPU {r['qemu_cpu']:5.2f} s  {mode} CPU {r['proxy_cpu']:5.2f} s",
                flush=True,
            )
    return runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--rounds", type=int, default=9)
    ap.add_argument("--size", type=int, default=512, help="MiB of random data in the guest")
    ap.add_argument("--channels", type=int, default=4, help="multifd channels (0: skip)")
    ap.add_argument(
        "--bandwidth", type=int, default=0, help="the source's max-bandwidth in MB/s (0: none)"
    )
    ap.add_argument("--qemu", default=QEMU)
    a = ap.parse_args()
    compile_qevm()
    warn_if_busy()
    warn_if_memory_full()
    t0 = time.time()
    bandwidth = a.bandwidth * 1000 * 1000
    results = [(c, run(a.qemu, a.size, c, a.rounds, bandwidth)) for c in sorted({0, a.channels})]
    med = statistics.median
    print()
    print(
        "| connections | direct ms: median (min-max) | bare forwarder | through the tap "
        "| tap / direct | forwarder / direct | tap / forwarder "
        "| QEMU CPU s direct / forwarded / tapped | forwarder, tap CPU s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    verdicts = []
    for channels, runs in results:
        ms = {mode: [r["ms"] for r in runs[mode]] for mode in MODES}
        m = {mode: med(ms[mode]) for mode in MODES}
        span = {mode: f"{m[mode]:.0f} ({min(ms[mode])}-{max(ms[mode])})" for mode in MODES}
        cpu = {k: {mode: med(r[k] for r in runs[mode]) for mode in MODES} for k in CPU}
        qemu_cpu = " / ".join(f"{cpu['qemu_cpu'][mode]:.2f}" for mode in MODES)
        proxy_cpu = ", ".join(f"{cpu['proxy_cpu'][mode]:.2f}" for mode in MODES[1:])
        ratio = m["tap"] / m["direct"]
        name = f"main + {channels} multifd" if channels else "main"
        print(
            f"| {name} | {span['direct']} | {span['forwarder']} | {span['tap']} | {ratio:.2f}x "
            f"| {m['forwarder'] / m['direct']:.2f}x | {m['tap'] / m['forwarder']:.2f}x "
            f"| {qemu_cpu} | {proxy_cpu} |"
        )
        verdicts.append((name, ratio))
    limit = f"max-bandwidth {a.bandwidth} MB/s" if a.bandwidth else "no bandwidth limit"
    print(f"\n{a.size} MiB of random data, {limit}, {a.rounds} rounds, {time.time() - t0:.0f} s")
    ok = True
    for name, ratio in verdicts:
        good = ratio <= TARGET
        ok &= good
        print(f"{'PASS' if good else 'FAIL'} {name}: {ratio:.2f}x (target <= {TARGET}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
