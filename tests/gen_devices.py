"""Make the captures in tests/data/devices with real QEMU.

Each capture is a small firmware-only VM (no guest OS, ``-nodefaults``,
32 MiB where the firmware allows) with PCI Express root ports and bridges,
devices behind them, virtio devices on every transport, several CPUs: the
firmware (SeaBIOS, or edk2 on aarch64) assigns bus numbers, programs BARs
and drives the virtio devices it boots from.  After it settled the VM is
stopped and, from the same stopped VM, the monitor's ``info pci``,
``query-pci``, ``info virtio``, ``info virtio-status`` and ``info
virtio-queue-status`` of every queue, ``info lapic`` of every CPU and ``info
pic`` are recorded in ``NAME.json`` (under ``truth``) before it migrates to
``NAME.mig`` (``exec:cat``), committed xz-compressed.

Run from the repository root: python tests/gen_devices.py [NAME ...]
QEMU 7.2 is Debian's; the 10.0 captures use $QEVM_QEMU_NEW (default
/tmp/qevm-trixie/qemu-system-x86_64, see .ci/qemu-trixie).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from qemu_util import qemu_version, xz_file  # noqa: E402
from qemuvm import Vm  # noqa: E402

OUT = pathlib.Path(__file__).parent / "data" / "devices"
NEW = os.environ.get("QEVM_QEMU_NEW", "/tmp/qevm-trixie/qemu-system-x86_64")

NET = "-netdev user,id=n{i},restrict=on"

CASES: dict[str, dict] = {
    # q35: two PCIe root ports (a modern virtio-net and virtio-scsi behind them: 4 KiB
    # config space, Express capability, extended capabilities), a PCIe-to-PCI bridge
    # with an e1000 and an rtl8139 behind it, a legacy-only virtio-blk SeaBIOS boots
    # from (legacy ring layout), a virtio-rng nobody drives, xhci, 4 CPUs, an RTC base
    "q35-bridges-72": {
        "binary": "qemu-system-x86_64",
        "wait": 4.0,
        "args": [
            "-M", "q35", "-m", "32", "-smp", "4", "-nodefaults", "-vga", "std",
            "-rtc", "base=2021-03-04T05:06:07,clock=vm",
            "-serial", "null",
            "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,addr=0x10",
            "-device", "pcie-root-port,id=rp2,bus=pcie.0,chassis=2,addr=0x11",
            "-netdev", "user,id=n0,restrict=on",
            "-device", "virtio-net-pci,id=net0,bus=rp1,netdev=n0,mac=52:54:00:00:01:01",
            "-device", "virtio-scsi-pci,id=scsi0,bus=rp2",
            "-device", "pcie-pci-bridge,id=br1,bus=pcie.0,addr=0x12",
            "-netdev", "user,id=n1,restrict=on",
            "-device", "e1000,id=e1,bus=br1,addr=0x1,netdev=n1,mac=52:54:00:00:01:02",
            "-netdev", "user,id=n2,restrict=on",
            "-device", "rtl8139,id=rtl1,bus=br1,addr=0x2,netdev=n2,mac=52:54:00:00:01:03,romfile=",
            "-drive", "file={disk},if=none,id=d0,format=raw",
            "-device", "virtio-blk-pci,id=blk0,drive=d0,disable-modern=on,disable-legacy=off,"
            "addr=0x4,bootindex=1",
            "-device", "virtio-rng-pci,id=rng0,addr=0x5",
            "-device", "qemu-xhci,id=xhci0,addr=0x6",
        ],
    },
    # i440FX on QEMU 10.0: a PCI-PCI bridge (SHPC, slot id caps) with a transitional
    # virtio-net and a virtio-balloon behind it, a modern-only virtio-blk SeaBIOS boots
    # from, virtio-serial, e1000e, 2 CPUs
    "pc-bridge-100": {
        "binary": NEW,
        "wait": 4.0,
        "args": [
            "-M", "pc", "-m", "32", "-smp", "2", "-nodefaults", "-vga", "std",
            "-serial", "null",
            "-device", "pci-bridge,id=br1,chassis_nr=1,addr=0x8",
            "-netdev", "user,id=n0,restrict=on",
            "-device", "virtio-net-pci,id=net0,bus=br1,addr=0x3,netdev=n0,"
            "mac=52:54:00:00:02:01",
            "-device", "virtio-balloon-pci,id=bal0,bus=br1,addr=0x4",
            "-drive", "file={disk},if=none,id=d0,format=raw",
            "-device", "virtio-blk-pci,id=blk0,drive=d0,disable-legacy=on,addr=0x5,"
            "bootindex=1",
            "-device", "virtio-serial-pci,id=ser0,addr=0x6",
            "-netdev", "user,id=n1,restrict=on",
            "-device", "e1000e,id=e2,addr=0x7,netdev=n1,mac=52:54:00:00:02:02",
        ],
    },
    # Arm virt without firmware: virtio-mmio devices (their own transport layout), a
    # PCIe root port on the gpex host bridge with a virtio-net behind it (BARs never
    # programmed: "not mapped")
    "arm-virt-mmio-72": {
        "binary": "qemu-system-aarch64",
        "wait": 0.5,
        "args": [
            "-M", "virt", "-cpu", "cortex-a57", "-m", "32", "-smp", "2", "-nodefaults",
            "-device", "virtio-rng-device,id=rng0",
            "-drive", "file={disk},if=none,id=d0,format=raw",
            "-device", "virtio-blk-device,id=blk0,drive=d0",
            "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,addr=0x2",
            "-netdev", "user,id=n0,restrict=on",
            "-device", "virtio-net-pci,id=net0,bus=rp1,netdev=n0,mac=52:54:00:00:03:01",
        ],
    },
}  # fmt: skip


def _dev_paths(query_pci: list[dict]) -> dict[str, str]:
    """qdev id -> QEMU's PCI device path (root ``0000:00``, then slot.fn per hop)."""
    out: dict[str, str] = {}

    def walk(devs: list[dict], prefix: str) -> None:
        for d in devs:
            path = f"{prefix}:{d['slot']:02x}.{d['function']:x}"
            if d.get("qdev_id"):
                out[d["qdev_id"]] = path
            walk((d.get("pci_bridge") or {}).get("devices") or [], path)

    for bus in query_pci:
        walk(bus["devices"], f"0000:{bus['bus']:02x}")
    return out


def _ring_indexes(vm: Vm, queues: dict[str, str]) -> dict[str, dict[str, int]]:
    """avail->idx and used->idx of every set-up queue, read by QEMU from guest RAM (xp)."""
    out = {}
    for i, text in queues.items():
        addr = {k: int(v, 16) for k, v in re.findall(r"(desc|avail|used):\s+0x([0-9a-f]+)", text)}
        if not addr.get("desc"):
            continue
        got = {}
        for ring in ("avail", "used"):
            line = vm.hmp(f"xp /1hx {addr[ring] + 2:#x}")
            got[f"{ring}_idx"] = int(line.split(":")[1].split()[0], 16)
        out[i] = got
    return out


def capture(name: str, case: dict, tmp: pathlib.Path) -> None:
    disk = tmp / "disk.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    args = [*(a.format(disk=disk) for a in case["args"]), "-display", "none"]
    mig = tmp / f"{name}.mig"
    truth: dict = {}
    with Vm(case["binary"], args, tmp, name) as vm:
        time.sleep(case["wait"])
        vm.cmd("stop")
        truth["info pci"] = vm.hmp("info pci")
        query_pci = vm.cmd("query-pci")
        truth["query-pci"] = query_pci
        paths = _dev_paths(query_pci)
        truth["virtio"] = {}
        truth["virtio_rings"] = {}
        listing = vm.hmp("info virtio")
        sections = {}
        for line in listing.splitlines():
            m = re.match(r"(\S+) \[(\S+)\]", line.strip())
            if not m:
                continue
            path = m.group(1)
            status = vm.hmp(f"info virtio-status {path}")
            nq = int(re.search(r"num_vqs:\s+(\d+)", status).group(1))
            queues = {str(i): vm.hmp(f"info virtio-queue-status {path} {i}") for i in range(nq)}
            truth["virtio"][path] = {"status": status, "queues": queues}
            truth["virtio_rings"][path] = _ring_indexes(vm, queues)
            qid = re.match(r"/machine/peripheral/([^/]+)", path)
            if qid and qid.group(1) in paths:
                sections[path] = paths[qid.group(1)]
        if "x86_64" in case["binary"]:
            truth["info lapic"] = {}
            for cpu in vm.cmd("query-cpus-fast"):
                idx = cpu["cpu-index"]
                truth["info lapic"][str(idx)] = vm.hmp(f"info lapic {idx}")
            truth["info pic"] = vm.hmp("info pic")
        truth["info mtree -f"] = vm.hmp("info mtree -f")
        vm.save(mig)
    xz_file(mig, OUT / f"{name}.mig.xz")
    meta = {
        "name": name,
        "qemu_version": qemu_version(case["binary"]),
        "argv": [pathlib.Path(case["binary"]).name, *case["args"]],
        "made_by": "tests/gen_devices.py",
        "virtio_pci_paths": sections,
        "truth": truth,
    }
    (OUT / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(name, mig.stat().st_size, (OUT / f"{name}.mig.xz").stat().st_size)


def main(names: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, case in CASES.items():
        if names and name not in names:
            continue
        if not shutil.which(case["binary"]) and not os.path.exists(case["binary"]):
            print(f"{name}: no {case['binary']}, skipped", file=sys.stderr)
            continue
        with tempfile.TemporaryDirectory(prefix="qevm-gen-devices-") as tmp:
            capture(name, case, pathlib.Path(tmp))


if __name__ == "__main__":
    main(sys.argv[1:])
    subprocess.run(["du", "-sh", str(OUT)], check=False)
