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
        src.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        query = src.wait_migration(300)
        dst.wait_incoming(300)
    out = {"query": query}
    if tap is not None:
        lines = tap.communicate(timeout=300)[0].splitlines()
        out["summary"] = json.loads(lines[-1])
        out["tap_rc"] = tap.returncode
    shutil.rmtree(rec, ignore_errors=True)
    return out


def run(qemu: str, size: int, channels: int, rounds: int) -> tuple[list[float], list[float]]:
    bios, payload = guest_files(size)
    args = argv(size, bios, payload)
    direct: list[float] = []
    tapped: list[float] = []
    label = f"multifd x{channels}" if channels else "single connection"
    for i in range(rounds):
        for mode in ("direct", "tap") if i % 2 == 0 else ("tap", "direct"):
            r = migrate(qemu, args, channels, mode == "tap")
            ms = r["query"]["total-time"]
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
                tapped.append(ms)
            else:
                direct.append(ms)
            print(f"  {label:18} round {i + 1}  {mode:6}  {ms:6d} ms", flush=True)
    return direct, tapped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--rounds", type=int, default=7)
    ap.add_argument("--size", type=int, default=1024, help="MiB of random data in the guest")
    ap.add_argument("--channels", type=int, default=4, help="multifd channels (0: skip)")
    ap.add_argument("--qemu", default=os.environ.get("QEVM_BENCH_QEMU", "qemu-system-x86_64"))
    a = ap.parse_args()
    compile_qevm()
    load = os.getloadavg()[0]
    if load > 1:
        print(f"warning: load average {load:.1f} at the start", file=sys.stderr)
    t0 = time.time()
    results = []
    for channels in (0, a.channels) if a.channels else (0,):
        direct, tapped = run(a.qemu, a.size, channels, a.rounds)
        results.append((channels, direct, tapped))
    print()
    print("| connections | direct ms (median, min-max) | through the tap | ratio of medians |")
    print("|---|---:|---:|---:|")
    verdicts = []
    for channels, direct, tapped in results:
        ratio = statistics.median(tapped) / statistics.median(direct)
        name = f"main + {channels} multifd" if channels else "main"
        print(
            f"| {name} | {statistics.median(direct):.0f} ({min(direct)}-{max(direct)}) "
            f"| {statistics.median(tapped):.0f} ({min(tapped)}-{max(tapped)}) | {ratio:.2f}x |"
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
