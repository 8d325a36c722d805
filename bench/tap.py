"""How much longer a live migration takes through ``qevm tap``, on loopback.

Two QEMUs (the installed one, Debian's 7.2; ``$QEVM_BENCH_QEMU`` overrides it)
migrate a paused guest (``-S``) whose RAM holds ``--size`` MiB of random bytes
over TCP on 127.0.0.1, with ``max-bandwidth`` lifted and a downtime limit so
large that the migration is one pass: the time is the time to move the data.
Each round migrates once directly and once through ``qevm tap --record DIR
--json`` (in alternating order), and takes QEMU's own ``total-time`` of the
source's ``query-migrate``.  The tap run must complete with the page counts
QEMU reports.  Then the same with multifd (``--channels`` channels).

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

from benchlib import REPO, WORK, MiB, compile_qevm, qevm_env

sys.path.insert(0, str(REPO / "tests"))
from qemuvm import Vm  # noqa: E402  (the tests' QMP driver)

TARGET = 1.3
OUT = WORK / "tap"


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
        with open(payload, "wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(MiB))
    return bios, payload


def argv(size_mib: int, bios: Path, payload: Path) -> list[str]:
    mem = size_mib + 256
    return [
        *("-machine", "pc,accel=tcg", "-m", str(mem), "-nodefaults", "-display", "none"),
        *("-bios", str(bios), "-S"),
        *("-device", f"loader,file={payload},addr=0x10000000"),
    ]


def migrate(qemu: str, args: list[str], channels: int, tapped: bool) -> dict:
    """One migration; QEMU's query-migrate, and the tap's summary when tapped."""
    dport = free_port()
    rec = OUT / "rec"
    shutil.rmtree(rec, ignore_errors=True)
    OUT.joinpath("vm").mkdir(exist_ok=True)
    tap = None
    with (
        Vm(qemu, [*args, "-incoming", f"tcp:127.0.0.1:{dport}"], OUT / "vm", "dst") as dst,
        Vm(qemu, args, OUT / "vm", "src") as src,
    ):
        if channels:
            for vm in (src, dst):
                caps = [{"capability": "multifd", "state": True}]
                vm.cmd("migrate-set-capabilities", capabilities=caps)
                vm.cmd("migrate-set-parameters", **{"multifd-channels": channels})
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40, "downtime-limit": 600000})
        port = dport
        if tapped:
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
            port = json.loads(tap.stdout.readline())["listen"][1]
        subprocess.run(["sync"], check=False)
        pids = [src.proc.pid, dst.proc.pid]
        qemu0 = sum(map(cpu_seconds, pids))
        tap0 = cpu_seconds(tap.pid, True) if tap is not None else 0.0
        t0 = time.perf_counter()
        src.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        while (query := src.cmd("query-migrate"))["status"] not in ("completed", "failed"):
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        qemu_cpu = sum(map(cpu_seconds, pids)) - qemu0
        tap_cpu = cpu_seconds(tap.pid, True) - tap0 if tap is not None else 0.0
        assert query["status"] == "completed", query
        dst.wait_migration(300)  # the destination has loaded it all
    out = {"query": query, "wall": wall, "qemu_cpu": qemu_cpu, "tap_cpu": tap_cpu}
    if tap is not None:
        lines = tap.communicate(timeout=300)[0].splitlines()
        out["summary"] = json.loads(lines[-1])
        out["tap_rc"] = tap.returncode
    shutil.rmtree(rec, ignore_errors=True)
    return out


def run(qemu: str, size: int, channels: int, rounds: int) -> dict[str, list[dict]]:
    """``rounds`` migrations each way; per mode: time (ms) and CPU seconds of each."""
    bios, payload = guest_files(size)
    args = argv(size, bios, payload)
    runs: dict[str, list[dict]] = {"direct": [], "tap": []}
    label = f"multifd x{channels}" if channels else "single connection"
    for i in range(rounds):
        for mode in ("direct", "tap") if i % 2 == 0 else ("tap", "direct"):
            r = migrate(qemu, args, channels, mode == "tap")
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
                f"  {label:18} round {i + 1:2}  {mode:6}  {r['ms']:6d} ms  "
                f"QEMU CPU {r['qemu_cpu']:5.2f} s  tap CPU {r['tap_cpu']:5.2f} s",
                flush=True,
            )
    return runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--rounds", type=int, default=9)
    ap.add_argument("--size", type=int, default=512, help="MiB of random data in the guest")
    ap.add_argument("--channels", type=int, default=4, help="multifd channels (0: skip)")
    ap.add_argument("--qemu", default=os.environ.get("QEVM_BENCH_QEMU", "qemu-system-x86_64"))
    a = ap.parse_args()
    compile_qevm()
    load = os.getloadavg()[0]
    if load > 1:
        print(f"warning: load average {load:.1f} at the start", file=sys.stderr)
    t0 = time.time()
    results = [(c, run(a.qemu, a.size, c, a.rounds)) for c in sorted({0, a.channels})]
    med = statistics.median
    print()
    print(
        "| connections | direct ms: median (min-max) | through the tap | ratio of medians "
        "| QEMU CPU s direct / tapped | tap CPU s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    verdicts = []
    for channels, runs in results:
        d = [r["ms"] for r in runs["direct"]]
        t = [r["ms"] for r in runs["tap"]]
        ratio = med(t) / med(d)
        name = f"main + {channels} multifd" if channels else "main"
        qd = med(r["qemu_cpu"] for r in runs["direct"])
        qt = med(r["qemu_cpu"] for r in runs["tap"])
        tc = med(r["tap_cpu"] for r in runs["tap"])
        print(
            f"| {name} | {med(d):.0f} ({min(d)}-{max(d)}) | {med(t):.0f} ({min(t)}-{max(t)}) "
            f"| {ratio:.2f}x | {qd:.2f} / {qt:.2f} | {tc:.2f} |"
        )
        verdicts.append((name, ratio))
    print(f"\n{a.size} MiB of random data, {a.rounds} rounds, {time.time() - t0:.0f} s in all")
    ok = True
    for name, ratio in verdicts:
        good = ratio <= TARGET
        ok &= good
        print(f"{'PASS' if good else 'FAIL'} {name}: {ratio:.2f}x (target <= {TARGET}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
