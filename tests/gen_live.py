"""Record real two-QEMU live migrations on the wire (tests/data/live/*-72).

The shared corpus has one raw multifd capture (QEMU 11.1) and no
postcopy-preempt one.  This script makes the missing kinds with the installed
QEMU (Debian 7.2, TCG): a source QEMU migrates over loopback TCP through
``qevm tap``, which forwards each connection to the destination QEMU (the
main stream first) and records each direction (``main.mig``, the multifd or
postcopy-preempt channels ``channel-N.bin`` in the order the source opened
them, the return path).  The tests of ``qevm tap`` (tests/test_tap.py) drive
the same migrations.

Guest: ``-M pc -m 128 -nodefaults`` with a 64 KiB ``-bios`` of our own
(:data:`GUEST_CODE`), a real-mode loop that never stops rewriting memory, and
``pattern1m.bin`` loaded at 0x1000000.  ``max-bandwidth`` and a 1 ms
``downtime-limit`` keep precopy from converging, so dirty pages are re-sent in
several passes until the limit is raised.

The destination is started with ``-S``, so it stays paused after the
migration (also after postcopy's RUN command) and its RAM is exactly what the
streams put there; ``pmemsave`` of guest-physical 0..128 MiB taken then is the
ground truth (kept as per-MiB sha256, like ``derive_truth.py`` does).  Its
trace events (``multifd_recv``, ``ram_load_loop``, ``ram_load_postcopy_loop``,
``postcopy_place_page*``) say what QEMU itself received on which channel; the
recipe keeps their summary as the truth for channel statistics.

Postcopy-preempt only sends pages the destination asks for, and a paused guest
asks for none.  Instead of letting the destination guest run (which would make
its RAM differ from the stream), the destination's monitor reads guest memory
during postcopy (``pmemsave`` of the loaded pattern and the dirtied pages):
QEMU's own accesses fault on the pages not received yet, the fault thread
requests them on the return path and the source sends them on the preempt
channel, while the guest never runs.

Run from the repository root: python tests/gen_live.py [NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from conftest import pattern1m  # noqa: E402
from qemu_util import Qmp  # noqa: E402

OUT = pathlib.Path(__file__).parent / "data" / "live"
QEMU = "qemu-system-x86_64"
RAM_MB = 128
MIB = 1 << 20
#: pmemsave reads 0xa0000-0xfffff through VGA/ROM mappings, not pc.ram
WINDOW = (0xA0000, 0x100000)
PATTERN_ADDR = 0x1000000

#: The guest, at F000:0000 of the BIOS (reset jumps there).  GNU as, .code16:
#:
#:     cli; xor %ax,%ax; mov %ax,%ss; mov $0x7000,%sp; xor %dx,%dx
#: again: inc %dx                              # pass counter
#:     mov %cr0,%eax; xor $0x10000,%eax; mov %eax,%cr0  # toggle CR0.WP: TCG flushes its TLB
#:     mov $0x2000,%ax; mov $64,%cx            # region A: 64 pages at 0x20000
#: a:  mov %ax,%es
#:     mov %dx,%es:0x000; mov %dx,%es:0x400; mov %dx,%es:0x800; mov %dx,%es:0xffe
#:     add $0x100,%ax; loop a
#:     mov $0x6000,%ax; mov %ax,%es; xor %di,%di  # region B: 16 pages at 0x60000
#:     mov %dx,%ax; test $1,%dl; jnz 1f; xor %ax,%ax  # odd passes fill, even ones zero
#: 1:  mov $0x8000,%cx; cld; rep stosw
#:     jmp again
#:
#: The TLB flush is needed because 7.2's dirty bitmap sync clears the migration
#: bits without resetting TCG's TLB entries: a page whose entry stays in the TLB
#: is written without being marked dirty again, and precopy would converge
#: after one pass.
GUEST_CODE = bytes.fromhex(
    "fa31c08ed0bc007031d2420f20c06635000001000f22c0b80020b940008ec026"
    "8916000026891600042689160008268916fe0f050001e2e5b800608ec031ff89d0f6c201750231c0b90080fcf3abebba"
)
#: F000:FFF0, the reset vector: jmp far F000:0000
RESET_JUMP = bytes.fromhex("ea000000f0")
GUEST = (
    "own 64 KiB -bios: real-mode loop writing its pass counter to 4 words of each of 64 pages "
    "at 0x20000-0x5ffff and filling 16 pages at 0x60000-0x6ffff with it (odd passes) or "
    "zeros (even passes); pattern1m.bin at 0x1000000"
)

#: Destination trace events whose summary is the recipe's truth.
DEST_TRACE = [
    "multifd_recv",
    "multifd_recv_new_channel",
    "multifd_recv_thread_end",
    "ram_load_loop",
    "ram_load_postcopy_loop",
    "postcopy_place_page",
    "postcopy_place_page_zero",
    "postcopy_preempt_new_channel",
    "ram_block_discard_range",
]
SOURCE_TRACE = [
    "multifd_send",
    "multifd_send_thread_end",
    "ram_save_queue_pages",
    "save_xbzrle_page_skipping",
]

FLAG_ZERO, FLAG_PAGE, FLAG_EOS, FLAG_CONTINUE = 0x2, 0x8, 0x10, 0x20
MULTIFD_COMPRESSION = {0: "none", 2: "zlib", 4: "zstd"}


@dataclass
class Spec:
    """How one capture is made."""

    description: str
    capabilities: list[str]
    #: set on both sides (they must agree)
    both: dict[str, Any] = field(default_factory=dict)
    #: source only, before ``migrate``
    source: dict[str, Any] = field(default_factory=dict)
    #: precopy: raise downtime-limit once dirty-sync-count reaches this
    passes: int = 5
    #: postcopy: start it once this many RAM bytes were transferred
    postcopy_after: int | None = None
    #: postcopy: guest-physical ranges the destination monitor reads meanwhile
    touch: list[tuple[int, int]] = field(default_factory=list)


CAPTURES: dict[str, Spec] = {
    "multifd-zlib-72": Spec(
        "multifd, 2 channels, zlib",
        ["multifd"],
        both={"multifd-channels": 2, "multifd-compression": "zlib"},
        source={"max-bandwidth": 4 << 20},
        passes=5,
    ),
    "multifd-zstd-72": Spec(
        "multifd, 2 channels, zstd",
        ["multifd"],
        both={"multifd-channels": 2, "multifd-compression": "zstd"},
        source={"max-bandwidth": 4 << 20},
        passes=4,
    ),
    "multifd-72": Spec(
        "multifd, 3 channels, no compression",
        ["multifd"],
        both={"multifd-channels": 3, "multifd-compression": "none"},
        source={"max-bandwidth": 4 << 20},
        passes=5,
    ),
    "postcopy-preempt-72": Spec(
        "postcopy-ram + postcopy-preempt; the paused destination's monitor reads the pattern "
        "and the dirtied pages during postcopy, so they are requested and sent on the preempt "
        "channel",
        ["postcopy-ram", "postcopy-preempt"],
        source={"max-bandwidth": 256 << 10, "max-postcopy-bandwidth": 256 << 10},
        postcopy_after=96 << 10,
        touch=[(0x20000, 0x50000), (PATTERN_ADDR, MIB)],
    ),
}


def guest_bios() -> bytes:
    """The 64 KiB BIOS image holding the guest loop."""
    rom = bytearray(0x10000)
    rom[: len(GUEST_CODE)] = GUEST_CODE
    rom[0xFFF0 : 0xFFF0 + len(RESET_JUMP)] = RESET_JUMP
    return bytes(rom)


def chunk_digests(data: bytes | bytearray) -> list[str]:
    """sha256 of every MiB with the VGA/ROM window zeroed (derive_truth.py's format)."""
    buf = bytearray(data)
    buf[WINDOW[0] : WINDOW[1]] = bytes(WINDOW[1] - WINDOW[0])
    return [hashlib.sha256(buf[i : i + MIB]).hexdigest() for i in range(0, len(buf), MIB)]


# -- the recording tap ---------------------------------------------------------------


class TapRun:
    """``qevm tap --json`` between the source and the destination, recording to ``rec``."""

    def __init__(self, dest_port: int, rec: pathlib.Path, *extra: str) -> None:
        # qevm from this checkout: conftest, imported above, put it on PYTHONPATH
        self.rec = rec
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "qevm", "tap", "--json", "--record", str(rec)),
                *("--listen", "127.0.0.1:0", "--to", f"127.0.0.1:{dest_port}"),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            raise RuntimeError(f"qevm tap did not start: {self.proc.stderr.read()}")  # type: ignore[union-attr]
        self.port = int(json.loads(first)["listen"][1])
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.returncode: int | None = None
        self.stderr = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    @property
    def summary(self) -> dict[str, Any]:
        return self.events[-1] if self.events and self.events[-1]["event"] == "summary" else {}

    def close(self, timeout: float = 30) -> int:
        """Wait for the tap to exit (it does once the migration's connections closed)."""
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.returncode = self.proc.wait(10)
        self._reader.join(10)
        self.stderr = self.proc.stderr.read() if self.proc.stderr else ""  # type: ignore[union-attr]
        return self.returncode


# -- QEMU processes -----------------------------------------------------------------


class Vm:
    """A QEMU run in ``workdir`` with QMP, its trace events logged, its QMP commands kept."""

    def __init__(self, role: str, argv: list[str], workdir: pathlib.Path, events: list[str]):
        self.role = role
        self.trace_path = workdir / f"{role}.trace"
        #: relative to workdir, so the recorded command lines name no temporary directory
        self.argv = [
            *argv,
            "-qmp",
            f"unix:{role}.qmp,server=on,wait=off",
            "-msg",
            "timestamp=on",
            "-D",
            f"{role}.trace",
        ]
        for ev in events:
            self.argv += ["-trace", ev]
        with open(workdir / f"{role}.err", "wb") as err:
            self.proc = subprocess.Popen(
                self.argv, cwd=workdir, stdout=subprocess.DEVNULL, stderr=err
            )
        try:
            self.qmp = Qmp(str(workdir / f"{role}.qmp"))
        except Exception:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(
                f"{role} QEMU did not start: {(workdir / f'{role}.err').read_text()}"
            ) from None
        self.log: list[dict[str, Any]] = []

    def cmd(self, command: str, **args: Any) -> Any:
        self.log.append({command: args})
        return self.qmp.cmd(command, **args)

    def status(self) -> dict:
        return self.qmp.cmd("query-migrate")

    def close(self) -> int:
        try:
            self.qmp.cmd("quit")
        except Exception:
            pass
        try:
            rc = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        try:
            self.qmp.close()
        except OSError:
            pass  # QEMU went first (a destination that failed exits)
        return rc


def caps_arg(names: list[str]) -> dict[str, Any]:
    return {"capabilities": [{"capability": n, "state": True} for n in names]}


def on_caps(vm: Vm) -> list[str]:
    return [c["capability"] for c in vm.qmp.cmd("query-migrate-capabilities") if c["state"]]


# -- trace summary (QEMU's own account of what it received) -------------------------

_TRACE = re.compile(r"(\d+)@\d+\.\d+:(\w+) ([^\n]*)")
_LOAD = re.compile(r"(\S+): addr: 0x([0-9a-f]+) flags: 0x([0-9a-f]+) host: (?:0x)?([0-9a-f]+)")
_PC_LOAD = re.compile(r"chan=(\d+) addr=0x([0-9a-f]+) flags=0x([0-9a-f]+)")
_DISCARD = re.compile(r"(.+)@0x([0-9a-f]+) \+ 0x([0-9a-f]+):")
_MF_RECV = re.compile(
    r"channel (\d+) packet_num (\d+) pages (\d+) flags 0x([0-9a-f]+) next packet size (\d+)"
)


def parse_trace(path: pathlib.Path) -> list[tuple[int, str, str]]:
    """``(thread id, event, arguments)`` of every trace line."""
    text = path.read_text(errors="replace")
    return [(int(t), ev, args) for t, ev, args in _TRACE.findall(text)]


def summarise_dest(
    lines: list[tuple[int, str, str]], blocks: dict[str, int], page_size: int = 4096
) -> dict[str, Any]:
    """What the destination received, per channel, from its trace events.

    ``blocks`` maps block names to used lengths.  Postcopy records name no
    block in their trace line; the host address placed right after (same
    thread) tells the block, by the host base of each block (postcopy's ADVISE
    discards every block whole, precopy records show it too).
    """
    multifd: dict[int, dict[str, Any]] = {}
    order: list[int] = []
    main: dict[str, set[int]] = {b: set() for b in blocks}
    bases: dict[str, int] = {}
    postcopy: dict[int, dict[str, int]] = {}
    pending: dict[int, tuple[int, int]] = {}  # thread -> (channel, addr) awaiting its place
    unresolved = 0
    for tid, ev, args in lines:
        if ev == "multifd_recv_new_channel":
            order.append(int(args.split()[-1]))
        elif ev == "multifd_recv":
            m = _MF_RECV.match(args)
            assert m, args
            ch, _num, pages, flags, _size = (int(m[1]), int(m[2]), int(m[3]), int(m[4], 16), m[5])
            c = multifd.setdefault(
                ch,
                {"packets": 0, "syncs": 0, "pages": 0, "sync_packets_with_pages": 0, "flags": []},
            )
            c["packets"] += 1
            c["pages"] += pages
            if flags & 1:
                c["syncs"] += 1
                if pages:
                    c["sync_packets_with_pages"] += 1
            if pages and (flags & 0xE) not in c["flags"]:
                c["flags"].append(flags & 0xE)
        elif ev == "ram_block_discard_range":
            m = _DISCARD.match(args)
            assert m, args
            bases.setdefault(m[1], int(m[2], 16))
        elif ev == "ram_load_loop":
            m = _LOAD.match(args)
            assert m, args
            name, addr, host = m[1], int(m[2], 16), int(m[4], 16)
            main.setdefault(name, set()).add(addr // page_size)
            bases.setdefault(name, host - addr)
        elif ev == "ram_load_postcopy_loop":
            m = _PC_LOAD.match(args)
            assert m, args
            ch, addr, flags = int(m[1]), int(m[2], 16), int(m[3], 16)
            if flags & (FLAG_ZERO | FLAG_PAGE):
                pending[tid] = (ch, addr)
                kind = "pages" if flags & FLAG_PAGE else "zero_pages"
                c = postcopy.setdefault(ch, {"pages": 0, "zero_pages": 0, "eos": 0})
                c[kind] += 1
            elif flags & FLAG_EOS:
                postcopy.setdefault(ch, {"pages": 0, "zero_pages": 0, "eos": 0})["eos"] += 1
        elif ev in ("postcopy_place_page", "postcopy_place_page_zero"):
            ch, addr = pending.pop(tid)
            host = int(args.split("=")[1], 16)
            for name, base in bases.items():
                if base <= host < base + blocks.get(name, 0) and host - base == addr:
                    if ch == 0:
                        main[name].add(addr // page_size)
                    break
            else:
                unresolved += 1
    out: dict[str, Any] = {}
    if multifd:
        out["multifd_accept_order"] = order
        out["multifd"] = {str(k): v for k, v in sorted(multifd.items())}
        for v in multifd.values():
            v["compression"] = [MULTIFD_COMPRESSION.get(f, hex(f)) for f in v.pop("flags")]
    if postcopy:
        out["postcopy_records"] = {str(k): v for k, v in sorted(postcopy.items())}
    out["main_channel_pages"] = {b: len(s) for b, s in main.items() if b in blocks}
    out["missing_without_channels"] = {
        b: -(-blocks[b] // page_size) - len(main[b])
        for b in blocks
        if -(-blocks[b] // page_size) - len(main[b])
    }
    if unresolved:
        out["postcopy_places_not_resolved"] = unresolved
    return out


def summarise_source(lines: list[tuple[int, str, str]]) -> dict[str, Any]:
    """The source's multifd_send_thread_end lines and postcopy page requests."""
    out: dict[str, Any] = {}
    for _tid, ev, args in lines:
        if ev == "multifd_send_thread_end":
            out.setdefault("multifd_send_thread_end", []).append(args)
        elif ev == "ram_save_queue_pages":
            out["page_requests"] = out.get("page_requests", 0) + 1
    return out


def ramblocks(vm: Vm) -> dict[str, int]:
    """Used length of every RAM block, from ``info ramblock``."""
    out = {}
    # columns: name, page size ("4 KiB"), offset, used, total
    for line in vm.qmp.hmp("info ramblock").splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 6:
            out[parts[0]] = int(parts[-2], 16)
    return out


# -- one capture --------------------------------------------------------------------


class NotRepresentative(RuntimeError):
    """A migration that completed without showing what its capture is made for."""


#: Migrations made before a capture that shows what it is for is given up.
ATTEMPTS = 3


def capture(name: str, spec: Spec, out: pathlib.Path, log: Any = print) -> dict[str, Any]:
    """Make capture ``name`` into ``out``; return its recipe.

    On a busy host the guest's vCPU may not run for a whole pass: nothing is
    dirtied, QEMU completes the migration early, and the capture lacks the
    passes it is made for.  Such a migration is made again.
    """
    for attempt in range(1, ATTEMPTS + 1):
        with tempfile.TemporaryDirectory(prefix="qevm-live-") as tmp:
            try:
                return Capture(name, spec, pathlib.Path(tmp)).run(out, log)
            except NotRepresentative as e:
                if attempt == ATTEMPTS:
                    raise
                log(f"{e}; migrating again")
    raise AssertionError("unreachable")


class Capture:
    """One migration: both QEMUs and the tap in ``work``, and what they reported."""

    def __init__(
        self,
        name: str,
        spec: Spec,
        work: pathlib.Path,
        qemu: str = QEMU,
        ram_mb: int = RAM_MB,
        source_ram: bool = False,
    ) -> None:
        self.name = name
        self.spec = spec
        self.work = work
        self.qemu = qemu
        self.ram_mb = ram_mb
        #: also take the source's RAM after the migration (src.pmem)
        self.source_ram = source_ram
        self.tap: TapRun | None = None
        self.src: Vm | None = None
        self.dst: Vm | None = None
        self.t0 = time.monotonic()
        self.timeline: list[dict[str, Any]] = []
        self.polls: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {}

    def mark(self, what: str, **kw: Any) -> None:
        self.timeline.append({"t": round(time.monotonic() - self.t0, 3), "what": what, **kw})

    def argv(self) -> list[str]:
        """The QEMU command line both sides share."""
        return [
            self.qemu,
            "-machine",
            "pc,accel=tcg",
            "-m",
            str(self.ram_mb),
            "-nodefaults",
            "-display",
            "none",
            "-bios",
            "bios.bin",
            "-device",
            f"loader,file=pattern1m.bin,addr={PATTERN_ADDR:#x}",
            "-S",
        ]

    def prepare(self) -> list[str]:
        """Write the guest's files into the work directory; the QEMU command line."""
        (self.work / "bios.bin").write_bytes(guest_bios())
        (self.work / "pattern1m.bin").write_bytes(pattern1m())
        return self.argv()

    def migrate(self) -> None:
        """Migrate through ``qevm tap`` (recording to ``work/rec``); take the destination's RAM."""
        work = self.work
        argv = self.prepare()
        rc: dict[str, int] = {}
        try:
            self.dst = Vm("dst", [*argv, "-incoming", "defer"], work, DEST_TRACE)
            self.src = Vm("src", argv, work, SOURCE_TRACE)
            self.mark("both started")
            self._migrate(self.src, self.dst)
            self._finish(self.src, self.dst)
        finally:
            for vm in (self.src, self.dst):
                if vm is not None:
                    rc[vm.role] = vm.close()
            if self.tap is not None:
                self.tap.close()
        self.mark("closed", exit_codes=rc)

    def run(self, out: pathlib.Path, log: Any = print) -> dict[str, Any]:
        """Migrate, take the destination's RAM, write the capture files to ``out``."""
        self.migrate()
        assert self.src is not None and self.dst is not None and self.tap is not None
        truth = summarise_dest(parse_trace(self.dst.trace_path), self.result["dest_ramblocks"])
        self._check(truth)
        return self._write(out, self.src, self.dst, truth, log)

    def _migrate(self, src: Vm, dst: Vm) -> None:
        spec = self.spec
        caps = [*spec.capabilities, "events"]
        for vm in (dst, src):
            vm.cmd("migrate-set-capabilities", **caps_arg(caps))
            if spec.both:
                vm.cmd("migrate-set-parameters", **spec.both)
        self.result["dest_parameters"] = dst.qmp.cmd("query-migrate-parameters")
        dst.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
        self.tap = TapRun(int(dst.status()["socket-address"][0]["port"]), self.work / "rec")
        src.cmd("migrate-set-parameters", **{**spec.source, "downtime-limit": 1})
        self.result["source_parameters"] = src.qmp.cmd("query-migrate-parameters")
        src.cmd("cont")
        time.sleep(0.5)  # let the guest loop run a while first
        src.cmd("migrate", uri=f"tcp:127.0.0.1:{self.tap.port}")
        self.mark("migrate issued")
        self._drive(src, dst)

    def _drive(self, src: Vm, dst: Vm) -> None:
        """Poll the source until it finishes, steering it as the spec says."""
        spec = self.spec
        raised = postcopy = False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = src.status()
            ram = st.get("ram", {})
            poll = {
                "status": st.get("status"),
                "dirty-sync-count": ram.get("dirty-sync-count"),
                "transferred": ram.get("transferred"),
                "remaining": ram.get("remaining"),
            }
            if not self.polls or {**self.polls[-1], "t": 0} != {**poll, "t": 0}:
                self.polls.append({"t": round(time.monotonic() - self.t0, 3), **poll})
            if st.get("status") in ("completed", "failed", "cancelled"):
                return
            if spec.postcopy_after is None:
                if not raised and ram.get("dirty-sync-count", 0) >= spec.passes:
                    src.cmd("migrate-set-parameters", **{"downtime-limit": 60000})
                    self.mark("downtime-limit raised", dirty_sync=ram.get("dirty-sync-count"))
                    raised = True
            elif not postcopy and ram.get("transferred", 0) >= spec.postcopy_after:
                src.cmd("migrate-start-postcopy")
                self.mark("postcopy started", transferred=ram.get("transferred"))
                postcopy = True
                self._touch(dst)
            time.sleep(0.02)
        raise TimeoutError(f"{self.name}: the migration did not finish")

    def _touch(self, dst: Vm) -> None:
        """Read guest memory on the paused destination during postcopy (faults -> requests)."""
        deadline = time.monotonic() + 30
        while dst.status().get("status") != "postcopy-active":
            if time.monotonic() > deadline:
                raise RuntimeError("the destination did not enter postcopy")
            time.sleep(0.005)
        self.mark("destination in postcopy")
        for addr, size in self.spec.touch:
            dst.cmd("pmemsave", val=addr, size=size, filename=os.devnull)
            self.mark(f"destination read {addr:#x}+{size:#x}")

    def _finish(self, src: Vm, dst: Vm) -> None:
        """Wait for both sides, then take the paused destination's RAM."""
        st_src = src.qmp.wait_migration(120)
        self.mark("source finished", status=st_src["status"])
        st_dst = dst.qmp.wait_migration(60)
        self.mark("destination finished", status=st_dst["status"])
        if st_src["status"] != "completed" or st_dst["status"] != "completed":
            raise RuntimeError(f"{self.name}: migration {st_src['status']}/{st_dst['status']}")
        dst_state = dst.qmp.cmd("query-status")
        if dst_state["running"]:
            raise RuntimeError(f"{self.name}: the destination runs, its RAM is not the stream's")
        dst.cmd("pmemsave", val=0, size=self.ram_mb * MIB, filename="dst.pmem")
        if self.source_ram:
            src.cmd("pmemsave", val=0, size=self.ram_mb * MIB, filename="src.pmem")
        self.mark("pmemsave done")
        self.result.update(
            {
                "source_query_migrate": st_src,
                "dest_query_migrate": st_dst,
                "dest_query_status": dst_state,
                "source_capabilities": on_caps(src),
                "dest_capabilities": on_caps(dst),
                "source_parameters_final": src.qmp.cmd("query-migrate-parameters"),
                "dest_ramblocks": ramblocks(dst),
                "dest_registers": dst.qmp.hmp("info registers").replace("\r", "").strip(),
            }
        )

    def _check(self, truth: dict[str, Any]) -> None:
        """Refuse a capture that does not show what it was made for."""
        syncs = self.result["source_query_migrate"]["ram"]["dirty-sync-count"]
        if self.spec.postcopy_after is None and syncs < self.spec.passes:
            raise NotRepresentative(f"{self.name}: only {syncs} dirty-sync passes")
        if "postcopy-preempt" in self.spec.capabilities:
            if not truth.get("postcopy_records", {}).get("1", {}).get("pages"):
                raise NotRepresentative(f"{self.name}: no page came on the preempt channel")

    def _write(
        self,
        out: pathlib.Path,
        src: Vm,
        dst: Vm,
        truth: dict[str, Any],
        log: Any,
    ) -> dict[str, Any]:
        name, work = self.name, self.work
        out.mkdir(parents=True, exist_ok=True)
        files: dict[str, Any] = {}
        channels = []

        def store(raw: pathlib.Path, fname: str) -> None:
            data = raw.read_bytes()
            packed = lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
            (out / f"{fname}.xz").write_bytes(packed)
            files[fname] = {
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "xz_bytes": len(packed),
            }

        rec = work / "rec"
        session = json.loads((rec / "session.json").read_text())
        for c in session["connections"]:
            recorded = (c.get("s2d") or {}).get("file")
            if recorded is None:
                continue
            if recorded == "main.mig":
                fname = f"{name}.mig"
            else:
                fname = f"{name}.ch{int(recorded.split('-')[1].split('.')[0])}.bin"
            store(rec / recorded, fname)
            channels.append({"file": fname, "recorded_as": recorded, **c})
        if (rec / "return-path.bin").exists():
            store(rec / "return-path.bin", f"{name}.rp.bin")
        pmem = (work / "dst.pmem").read_bytes()
        digests = {
            "source": f"pmemsave 0 {self.ram_mb * MIB:#x} on the destination (tests/gen_live.py)",
            "chunk_size": MIB,
            "zeroed": list(WINDOW),
            "size": len(pmem),
            "sha256": chunk_digests(pmem),
        }
        (out / f"{name}.pmem-sha256.json").write_text(json.dumps(digests, indent=1) + "\n")
        version = subprocess.run([self.qemu, "--version"], capture_output=True, text=True).stdout
        recipe = {
            "name": name,
            "description": self.spec.description,
            "qemu": version.splitlines()[0].strip(),
            "ram_mb": self.ram_mb,
            "guest": GUEST,
            "guest_code": GUEST_CODE.hex(),
            "source_cmdline": src.argv,
            "dest_cmdline": dst.argv,
            "source_qmp": src.log,
            "dest_qmp": dst.log,
            **self.result,
            "timeline": self.timeline,
            "source_polls": self.polls,
            "channels": channels,
            "tap_summary": self.tap.summary if self.tap else None,
            "truth": truth,
            "source_trace": summarise_source(parse_trace(src.trace_path)),
            "files": files,
        }
        (out / f"{name}.json").write_text(json.dumps(recipe, indent=1) + "\n")
        syncs = self.result["source_query_migrate"]["ram"]["dirty-sync-count"]
        sizes = ", ".join(f"{k} {v['xz_bytes']}" for k, v in files.items())
        log(f"{name}: {syncs} dirty-sync passes, xz bytes: {sizes}")
        return recipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"captures to make (default all: {list(CAPTURES)})")
    ap.add_argument("--out", type=pathlib.Path, default=OUT)
    a = ap.parse_args()
    for name in a.names or CAPTURES:
        capture(name, CAPTURES[name], a.out)


if __name__ == "__main__":
    main()
