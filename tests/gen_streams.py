"""Make the streams in tests/data/generated with the installed QEMU (Debian 7.2).

They cover what the shared corpus does not: machine types whose streams have
no section footers, no configuration section and no JSON description
(pc-i440fx-2.2 / 2.3), send-configuration / send-section-footer turned off
by -global, and the live "block" and "dirty-bitmap" sections.  Guests are
paused (-S), so RAM holds only firmware and the
loaded pattern and the streams compress to almost nothing.

Run from the repository root: python tests/gen_streams.py
"""

from __future__ import annotations

import json
import lzma
import pathlib
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from conftest import pattern1m  # noqa: E402
from qemu_util import Qemu, qemu_version  # noqa: E402

OUT = pathlib.Path(__file__).parent / "data" / "generated"
#: The first bytes of pattern1m.bin are loaded at 0x1000000 (little, so the files stay small).
PATTERN_BYTES = 0x10000

BASE = ["qemu-system-x86_64", "-S", "-nodefaults", "-m", "32"]
CASES = {
    # machine types <= 2.3: no configuration section, no footers
    "pc-2.3-nofooter": ["-M", "pc-i440fx-2.3"],
    # <= 2.2: also no JSON description (suppress-vmdesc defaults to on)
    "pc-2.2-nodesc": ["-M", "pc-i440fx-2.2"],
    # the same machine with a description, to decode the one above with --desc
    "pc-2.2-desc": ["-M", "pc-i440fx-2.2,suppress-vmdesc=off"],
    # a current machine with footers and configuration switched off
    "pc-7.2-noconfig": [
        "-M",
        "pc-i440fx-7.2",
        "-global",
        "migration.send-configuration=off",
        "-global",
        "migration.send-section-footer=off",
    ],
    # live block migration and a dirty bitmap of a small disk (QEMU <= 9.0)
    "pc-7.2-block-bitmap": [
        "-M",
        "pc-i440fx-7.2",
        "-blockdev",
        "driver=qcow2,node-name=disk0,file.driver=file,file.filename={disk}",
        "-device",
        "virtio-blk-pci,drive=disk0",
    ],
}
#: QMP commands run before saving, per case.
SETUP = {
    "pc-7.2-block-bitmap": [
        ("block-dirty-bitmap-add", {"node": "disk0", "name": "bm0", "granularity": 65536}),
        (
            "migrate-set-capabilities",
            {
                "capabilities": [
                    {"capability": "block", "state": True},
                    {"capability": "dirty-bitmaps", "state": True},
                ]
            },
        ),
    ],
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pat = pathlib.Path(tmp) / "pattern1m.bin"
        pat.write_bytes(pattern1m()[:PATTERN_BYTES])
        disk = pathlib.Path(tmp) / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "2M"], check=True)
        subprocess.run(
            ["qemu-io", "-c", "write -P 0x5a 0 64k", str(disk)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for name, args in CASES.items():
            args = [a.format(disk=disk) for a in args]
            argv = [*BASE, *args, "-device", f"loader,file={pat},addr=0x1000000"]
            mig = pathlib.Path(tmp) / f"{name}.mig"
            with Qemu(argv) as q:
                for cmd, cmd_args in SETUP.get(name, []):
                    q.qmp.cmd(cmd, **cmd_args)
                q.save(str(mig))
                regs = q.qmp.hmp("info registers")
                mtree = q.qmp.hmp("info mtree -f")
            (OUT / f"{name}.mig.xz").write_bytes(lzma.compress(mig.read_bytes(), preset=9))
            recipe = {
                "qemu_version": qemu_version(),
                "argv": [
                    a.replace(str(pat), "patterns/pattern1m.bin").replace(str(disk), "disk.qcow2")
                    for a in argv
                ],
                "qmp_setup": SETUP.get(name, []),
                "pattern_bytes": PATTERN_BYTES,
                "made_by": "tests/gen_streams.py",
                "mtree": mtree,
            }
            (OUT / f"{name}.json").write_text(json.dumps(recipe, indent=1) + "\n")
            (OUT / f"{name}.regs.txt").write_text(regs)
            print(name, mig.stat().st_size)


if __name__ == "__main__":
    main()
