"""Make the streams of tests/data/robust and qevm's demo stream with the installed QEMU (7.2).

    python tests/gen_robust.py [NAME ...]

- ``isapc-two-ide-7.2``: an ISA-only PC; both of its IDE controllers register
  as ``isa-ide`` instance 0, and only the second one saved has a drive (a
  1 MiB raw disk, ``-drive if=ide,index=2``) that SeaBIOS identified, so the
  two description entries differ (``ide_drive/identify``).  The guest runs
  1.5 s (SeaBIOS probes the drives), then is stopped and saved.
- ``pc-7.2-footer-in-timer``: a paused ``pc-i440fx-7.2`` VM whose stream was
  then edited: the 8 bytes of the ``timer`` section that QEMU skips
  (VMSTATE_UNUSED(8) in cpu-timers.c) hold ``7e`` + be32(the timer's section
  id) + ``00 06 00``, a section footer followed by what looks like EOF and a
  description.  QEMU 7.2 loads it (``tests/test_robust.py`` checks that).
- ``q35-10.0-virtio-mem-early``: made with QEMU 10.0 (``$QEVM_QEMU_NEW``, e.g.
  Debian trixie's from ``.ci/qemu-trixie``): a paused q35 VM with a virtio-mem
  device, whose immutable properties QEMU (8.0 and later) saves "early", in a
  FULL section between RAM's START and its first PART.
- ``demo``: ``src/qevm/data/demo.mig.xz``, the example stream ``qevm demo``
  reads: a q35 VM with 32 MiB, an e1000 NIC and a virtio RNG that ran SeaBIOS
  for half a second.

Each stream gets a ``NAME.json`` next to it: QEMU's version, the argv, and
what the test compares with (HMP ``info qtree`` for the IDE drives).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from qemu_util import Qemu, qemu_version, xz_file  # noqa: E402

HERE = pathlib.Path(__file__).parent
OUT = HERE / "data" / "robust"
DEMO = HERE.parent / "src" / "qevm" / "data"

BASE = ["qemu-system-x86_64", "-nodefaults", "-m", "32"]
ISAPC = [*BASE, "-M", "isapc", "-drive", "if=ide,index=2,file={disk},format=raw"]
PC = [*BASE, "-M", "pc-i440fx-7.2", "-S"]
VIRTIO_MEM = [
    "-nodefaults",
    "-M",
    "q35",
    "-m",
    "32M,maxmem=256M",
    "-S",
    "-object",
    "memory-backend-ram,id=mem0,size=128M",
    "-device",
    "virtio-mem-pci,memdev=mem0,id=vm0,requested-size=0",
]
DEMO_ARGV = [
    *BASE,
    "-M",
    "pc-q35-7.2",
    "-netdev",
    "user,id=n0",
    "-device",
    "e1000,netdev=n0,mac=52:54:00:12:34:56,romfile=",
    "-device",
    "virtio-rng-pci",
]

#: The bytes written over the timer section's VMSTATE_UNUSED(8), after 7e + be32(id).
AFTER_FOOTER = b"\x00\x06\x00"


def _save(argv: list[str], path: pathlib.Path, run: float = 0.0) -> dict[str, str]:
    """Start QEMU, let the guest run ``run`` seconds, stop it, save it to ``path``."""
    with Qemu(argv) as q:
        if run:
            time.sleep(run)
            q.qmp.cmd("stop")
        q.save(str(path))
        return {"qtree": q.qmp.hmp("info qtree"), "registers": q.qmp.hmp("info registers")}


def _timer_unused(path: pathlib.Path) -> tuple[int, int]:
    """Offset of the timer section's 8 unused bytes, and the section's id."""
    sys.path.insert(0, str(HERE.parent / "src"))
    import qevm

    with qevm.open(path) as mig:
        dev = mig.device("timer")
        fv = next(f for f in dev.state.fields if f.desc.type == "unused_buffer")
        assert fv.size == 8, fv.size
        return fv.offset, dev.section_id


def _recipe(name: str, argv: list[str], **extra: object) -> None:
    recipe = {"qemu_version": qemu_version(), "made_by": "tests/gen_robust.py", "argv": argv}
    recipe.update(extra)
    (OUT / f"{name}.json").write_text(json.dumps(recipe, indent=1) + "\n")


def make_isapc(tmp: pathlib.Path) -> None:
    disk = tmp / "disk.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "1M"], check=True)
    argv = [a.format(disk=disk) for a in ISAPC]
    mig = tmp / "isapc.mig"
    seen = _save(argv, mig, run=1.5)
    xz_file(mig, OUT / "isapc-two-ide-7.2.mig.xz")
    _recipe(
        "isapc-two-ide-7.2",
        [a.replace(str(disk), "disk.img (qemu-img create -f raw disk.img 1M)") for a in argv],
        qtree=seen["qtree"],
    )


def make_footer_in_timer(tmp: pathlib.Path) -> None:
    mig = tmp / "pc.mig"
    _save(PC, mig)
    data = bytearray(mig.read_bytes())
    original = hashlib.sha256(data).hexdigest()
    off, sid = _timer_unused(mig)
    edit = struct.pack(">BI", 0x7E, sid) + AFTER_FOOTER
    data[off : off + 8] = edit
    mig.write_bytes(data)
    xz_file(mig, OUT / "pc-7.2-footer-in-timer.mig.xz")
    _recipe(
        "pc-7.2-footer-in-timer",
        PC,
        original_sha256=original,
        edit={"offset": off, "bytes": edit.hex(), "section_id": sid},
    )


def make_virtio_mem_early(tmp: pathlib.Path) -> None:
    binary = os.environ.get("QEVM_QEMU_NEW")
    if not binary:
        raise SystemExit("q35-10.0-virtio-mem-early needs QEVM_QEMU_NEW (a QEMU >= 8.0)")
    argv = [binary, *VIRTIO_MEM]
    mig = tmp / "vmem.mig"
    _save(argv, mig)
    xz_file(mig, OUT / "q35-10.0-virtio-mem-early.mig.xz")
    recipe = {
        "qemu_version": qemu_version(binary),
        "made_by": "tests/gen_robust.py",
        "argv": ["qemu-system-x86_64", *VIRTIO_MEM],
    }
    (OUT / "q35-10.0-virtio-mem-early.json").write_text(json.dumps(recipe, indent=1) + "\n")


def make_demo(tmp: pathlib.Path) -> None:
    mig = tmp / "demo.mig"
    _save(DEMO_ARGV, mig, run=0.5)
    DEMO.mkdir(exist_ok=True)
    xz_file(mig, DEMO / "demo.mig.xz")
    recipe = {"qemu_version": qemu_version(), "made_by": "tests/gen_robust.py", "argv": DEMO_ARGV}
    (DEMO / "demo.json").write_text(json.dumps(recipe, indent=1) + "\n")


MAKERS = {
    "isapc-two-ide-7.2": make_isapc,
    "pc-7.2-footer-in-timer": make_footer_in_timer,
    "q35-10.0-virtio-mem-early": make_virtio_mem_early,
    "demo": make_demo,
}


def main(names: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or MAKERS:
            MAKERS[name](pathlib.Path(tmp))
            print("made", name)


if __name__ == "__main__":
    main(sys.argv[1:])
