"""Make source/destination pairs with real QEMU and record QEMU's own verdict.

For each case: the source configuration, started paused (``-S``, no guest,
``-nodefaults``, 32 MiB unless the case says otherwise), is migrated to
``NAME.src.mig`` (``exec:cat``); the destination configuration is saved the
same way to ``NAME.dst.mig`` (what a user gives ``qevm check --against``), and
its binary's ``-dump-vmstate`` for its machine type is written to
``NAME.dst.vmstate.json``; then the destination is started with ``-incoming
defer`` and QMP ``migrate-incoming exec:cat NAME.src.mig``: whether the load
completed and what it printed go to ``NAME.verdict.json``.  The verdict comes
from that load, never from qevm.

    python tests/gen_check.py OUTDIR [NAME ...]      # one directory of pairs
    python tests/gen_check.py --tar FILE.tar.xz       # all pairs, one xz'd tar

``tests/data/check/pairs.tar.xz`` was made with ``--tar`` (Debian's QEMU 7.2
and trixie's 10.0 via ``$QEVM_QEMU_NEW``); ``tests/test_check.py`` also makes
some pairs at run time with whichever QEMU is installed.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from qemuvm import Vm  # noqa: E402

OLD = "qemu-system-x86_64"
ARM = "qemu-system-aarch64"
NEW = os.environ.get("QEVM_QEMU_NEW", "/tmp/qevm-trixie/qemu-system-x86_64")
BASE = ["-S", "-nodefaults", "-display", "none", "-accel", "tcg"]


@dataclass
class Side:
    """One QEMU configuration: binary, arguments, migration capabilities.

    ``run``: seconds its firmware runs before it is stopped and saved (SeaBIOS
    booting from a virtio disk, iPXE from a virtio NIC: the guest has then
    negotiated virtio features); 0 saves it paused from the start.  ``{disk}``
    in the arguments is a 64 KiB boot disk whose boot sector loops forever.
    """

    binary: str
    args: list[str]
    caps: dict[str, bool] = field(default_factory=dict)
    params: dict[str, object] = field(default_factory=dict)
    run: float = 0.0


@dataclass
class Case:
    name: str
    src: Side
    dst: Side
    why: str


def _q(machine: str, *more: str, m: str = "32") -> list[str]:
    return ["-M", machine, "-m", m, *more]


def cases() -> list[Case]:
    """The pairs: what changes between source and destination."""
    q7, p7 = "pc-q35-7.2", "pc-i440fx-7.2"
    c = [
        Case("same-q35-72", Side(OLD, _q(q7)), Side(OLD, _q(q7)), "identical"),
        Case(
            "same-pc-100",
            Side(NEW, _q("pc-i440fx-10.0")),
            Side(NEW, _q("pc-i440fx-10.0")),
            "identical",
        ),
        Case("alias-pc", Side(OLD, _q("pc")), Side(OLD, _q(p7)), "pc is pc-i440fx-7.2"),
        Case("machine-71", Side(OLD, _q(p7)), Side(OLD, _q("pc-i440fx-7.1")), "machine type"),
        Case("pc-to-q35", Side(OLD, _q(p7)), Side(OLD, _q(q7)), "machine family"),
        Case(
            "fwd-72-100-q35",
            Side(OLD, _q(q7, "-device", "e1000e", "-device", "virtio-rng-pci")),
            Side(NEW, _q(q7, "-device", "e1000e", "-device", "virtio-rng-pci")),
            "7.2 to 10.0, same machine",
        ),
        Case(
            "back-100-72-q35",
            Side(NEW, _q(q7, "-device", "e1000e", "-device", "virtio-rng-pci")),
            Side(OLD, _q(q7, "-device", "e1000e", "-device", "virtio-rng-pci")),
            "10.0 to 7.2, same machine",
        ),
        Case(
            "back-100-72-pc",
            Side(NEW, _q(p7, "-device", "e1000")),
            Side(OLD, _q(p7, "-device", "e1000")),
            "10.0 to 7.2, pc",
        ),
        Case("smp-2-to-1", Side(OLD, _q(q7, "-smp", "2")), Side(OLD, _q(q7)), "fewer CPUs"),
        Case("smp-1-to-2", Side(OLD, _q(q7)), Side(OLD, _q(q7, "-smp", "2")), "more CPUs"),
        Case(
            "maxcpus-4-to-2",
            Side(OLD, _q(q7, "-smp", "1,maxcpus=4")),
            Side(OLD, _q(q7, "-smp", "1,maxcpus=2")),
            "possible CPUs",
        ),
        Case(
            "slots-2-to-0",
            Side(OLD, _q(q7, m="32,slots=2,maxmem=1G")),
            Side(OLD, _q(q7)),
            "memory hotplug slots",
        ),
        Case(
            "slots-0-to-2",
            Side(OLD, _q(q7)),
            Side(OLD, _q(q7, m="32,slots=2,maxmem=1G")),
            "memory hotplug slots",
        ),
        Case(
            "slots-2-to-4-pc",
            Side(NEW, _q(p7, m="32,slots=2,maxmem=1G")),
            Side(NEW, _q(p7, m="32,slots=4,maxmem=1G")),
            "memory hotplug slots (piix4)",
        ),
        Case("ram-32-to-64", Side(OLD, _q(p7)), Side(OLD, _q(p7, m="64")), "RAM size"),
        Case(
            "rng-missing",
            Side(OLD, _q(q7, "-device", "virtio-rng-pci")),
            Side(OLD, _q(q7)),
            "device only at the source",
        ),
        Case(
            "rng-extra",
            Side(OLD, _q(q7)),
            Side(OLD, _q(q7, "-device", "virtio-rng-pci")),
            "device only at the destination",
        ),
        Case(
            "rng-slot",
            Side(OLD, _q(q7, "-device", "virtio-rng-pci,addr=4")),
            Side(OLD, _q(q7, "-device", "virtio-rng-pci,addr=5")),
            "device at another slot",
        ),
        Case(
            "e1000-rom-missing",
            Side(OLD, _q(p7, "-device", "e1000")),
            Side(OLD, _q(p7, "-device", "e1000,romfile=")),
            "option ROM only at the source",
        ),
        Case(
            "e1000-rom-extra",
            Side(OLD, _q(p7, "-device", "e1000,romfile=")),
            Side(OLD, _q(p7, "-device", "e1000")),
            "option ROM only at the destination",
        ),
        Case(
            "vgamem-8-to-16",
            Side(OLD, _q(p7, "-device", "VGA,vgamem_mb=8")),
            Side(OLD, _q(p7, "-device", "VGA")),
            "VGA memory size",
        ),
        Case(
            "vga-to-cirrus",
            Side(OLD, _q(p7, "-device", "VGA")),
            Side(OLD, _q(p7, "-device", "cirrus-vga")),
            "another VGA",
        ),
        Case(
            "xhci-ports",
            Side(OLD, _q(q7, "-device", "qemu-xhci,p2=8")),
            Side(OLD, _q(q7, "-device", "qemu-xhci")),
            "xhci port count",
        ),
        Case(
            "xhci-same",
            Side(NEW, _q(q7, "-device", "qemu-xhci")),
            Side(NEW, _q(q7, "-device", "qemu-xhci")),
            "identical, with xhci",
        ),
        Case(
            "net-vectors",
            Side(OLD, _q(q7, "-device", "virtio-net-pci,vectors=3")),
            Side(OLD, _q(q7, "-device", "virtio-net-pci")),
            "MSI-X vectors (device check)",
        ),
        Case(
            "net-rx-queue",
            Side(NEW, _q(q7, "-device", "virtio-net-pci,rx_queue_size=512")),
            Side(NEW, _q(q7, "-device", "virtio-net-pci")),
            "virtio queue size (device check)",
        ),
        Case("smm-off-on", Side(OLD, _q(q7 + ",smm=off")), Side(OLD, _q(q7)), "SMM"),
        Case(
            "ignore-shared-src",
            Side(OLD, _q(p7), caps={"x-ignore-shared": True}),
            Side(OLD, _q(p7)),
            "capability only at the source",
        ),
        Case(
            "ignore-shared-both",
            Side(OLD, _q(p7), caps={"x-ignore-shared": True}),
            Side(OLD, _q(p7), caps={"x-ignore-shared": True}),
            "capability on both sides",
        ),
        Case(
            "uuid",
            Side(
                OLD,
                _q(p7, "-uuid", "11111111-2222-3333-4444-555555555555"),
                caps={"validate-uuid": True},
            ),
            Side(
                OLD,
                _q(p7, "-uuid", "11111111-2222-3333-4444-666666666666"),
                caps={"validate-uuid": True},
            ),
            "validate-uuid with another UUID",
        ),
        Case(
            "serial-missing",
            Side(OLD, _q(p7, "-serial", "null")),
            Side(OLD, _q(p7)),
            "ISA serial port only at the source",
        ),
        Case(
            "maxcpus-4-to-2-100",
            Side(NEW, _q("pc-q35-10.0", "-smp", "1,maxcpus=4")),
            Side(NEW, _q("pc-q35-10.0", "-smp", "1,maxcpus=2")),
            "possible CPUs (10.0)",
        ),
        *device_cases(),
        Case(
            "arm-a57-to-a15",
            Side(ARM, _q("virt-7.2", "-cpu", "cortex-a57")),
            Side(ARM, _q("virt-7.2", "-cpu", "cortex-a15")),
            "another CPU model (aarch64)",
        ),
        Case(
            "arm-same",
            Side(ARM, _q("virt-7.2", "-cpu", "cortex-a57")),
            Side(ARM, _q("virt-7.2", "-cpu", "cortex-a57")),
            "identical (aarch64)",
        ),
    ]
    return c


def boot_disk(workdir: pathlib.Path) -> pathlib.Path:
    """A 64 KiB raw disk whose boot sector is ``jmp $`` (SeaBIOS boots it and stays)."""
    disk = workdir / "boot.img"
    if not disk.exists():
        sector = bytearray(512)
        sector[0:2] = b"\xeb\xfe"
        sector[510:512] = b"\x55\xaa"
        disk.write_bytes(bytes(sector) + bytes(65536 - 512))
    return disk


def _args(side: Side, workdir: pathlib.Path) -> list[str]:
    if not any("{disk}" in a for a in side.args):
        return list(side.args)
    disk = str(boot_disk(workdir))
    return [a.replace("{disk}", disk) for a in side.args]


def device_cases() -> list[Case]:
    """Pairs a device's own load checks decide: read-only PCI config bytes, ring sizes,
    virtio features (the firmware's drivers negotiate them: iPXE on a virtio NIC with
    ``-boot n``, SeaBIOS on a virtio disk)."""
    q7, q10 = "pc-q35-7.2", "pc-q35-10.0"
    rp = ["-device", "pcie-root-port,id=rp,chassis=1,addr=0x10"]
    disk = ["-drive", "file={disk},if=none,id=d0,format=raw"]
    blk = "virtio-blk-pci,drive=d0,disable-legacy=on"
    net = ["-boot", "n", "-device"]
    return [
        Case(
            "e1000-model",
            Side(OLD, _q("pc-i440fx-7.2", "-device", "e1000,addr=4")),
            Side(OLD, _q("pc-i440fx-7.2", "-device", "e1000-82544gc,addr=4")),
            "another e1000 model at the slot (device ID)",
        ),
        Case(
            "net-modern-only-100",
            Side(NEW, _q(q10, "-device", "virtio-net-pci,disable-legacy=on,addr=4")),
            Side(NEW, _q(q10, "-device", "virtio-net-pci,addr=4")),
            "virtio-net non-transitional at the source, transitional at the destination",
        ),
        Case(
            "net-aer-100",
            Side(NEW, _q(q10, *rp, "-device", "virtio-net-pci,bus=rp,aer=on")),
            Side(NEW, _q(q10, *rp, "-device", "virtio-net-pci,bus=rp")),
            "AER capability only at the source (the destination's bytes there are writable)",
        ),
        Case(
            "net-aer-dst-100",
            Side(NEW, _q(q10, *rp, "-device", "virtio-net-pci,bus=rp")),
            Side(NEW, _q(q10, *rp, "-device", "virtio-net-pci,bus=rp,aer=on")),
            "AER capability only at the destination",
        ),
        Case(
            "bridge-shpc",
            Side(OLD, _q("pc-i440fx-7.2", "-device", "pci-bridge,chassis_nr=1,shpc=off")),
            Side(OLD, _q("pc-i440fx-7.2", "-device", "pci-bridge,chassis_nr=1,shpc=on")),
            "SHPC capability only at the destination (not virtio)",
        ),
        Case(
            "blk-queue-size-fw",
            Side(OLD, _q(q7, *disk, "-device", blk + ",queue-size=128"), run=2),
            Side(OLD, _q(q7, *disk, "-device", blk + ",queue-size=64"), run=2),
            "virtio-blk ring larger than the destination's queue-size (SeaBIOS using it)",
        ),
        Case(
            "net-rx-queue-fw",
            Side(OLD, _q(q7, *net, "virtio-net-pci,rx_queue_size=1024"), run=3),
            Side(OLD, _q(q7, *net, "virtio-net-pci"), run=3),
            "virtio-net rx_queue_size larger at the source (iPXE using it)",
        ),
        Case(
            "net-mtu-fw",
            Side(OLD, _q(q7, *net, "virtio-net-pci,host_mtu=1400"), run=3),
            Side(OLD, _q(q7, *net, "virtio-net-pci"), run=3),
            "VIRTIO_NET_F_MTU negotiated by iPXE, not offered at the destination",
        ),
        Case(
            "net-fw-same",
            Side(OLD, _q(q7, *net, "virtio-net-pci,host_mtu=1400"), run=3),
            Side(OLD, _q(q7, *net, "virtio-net-pci,host_mtu=1400"), run=3),
            "identical, both guests' iPXE negotiated (the destination proves its offer)",
        ),
        Case(
            "blk-iommu-fw-100",
            Side(NEW, _q(q10, *disk, "-device", blk + ",iommu_platform=on"), run=2),
            Side(NEW, _q(q10, *disk, "-device", blk), run=2),
            "VIRTIO_F_IOMMU_PLATFORM negotiated by SeaBIOS, switched off at the destination",
        ),
        Case(
            "blk-fw-same-100",
            Side(NEW, _q(q10, *disk, "-device", blk), run=2),
            Side(NEW, _q(q10, *disk, "-device", blk), run=2),
            "identical, both guests' SeaBIOS negotiated",
        ),
    ]


def _start(side: Side, workdir: pathlib.Path, name: str, extra: list[str]) -> Vm:
    vm = Vm(side.binary, [*BASE, *_args(side, workdir), *extra], workdir, name)
    if side.caps:
        vm.cmd(
            "migrate-set-capabilities",
            capabilities=[{"capability": k, "state": v} for k, v in side.caps.items()],
        )
    if side.params:
        vm.cmd("migrate-set-parameters", **side.params)
    return vm


def save(side: Side, path: pathlib.Path, workdir: pathlib.Path) -> None:
    with _start(side, workdir, path.name + "-save", []) as vm:
        if side.run:
            vm.cmd("cont")
            time.sleep(side.run)
            vm.cmd("stop")
        vm.save(path)


def dump_vmstate(side: Side, path: pathlib.Path) -> None:
    machine = side.args[side.args.index("-M") + 1].split(",")[0]
    subprocess.run(
        [side.binary, "-M", machine, "-nodefaults", "-display", "none", "-dump-vmstate", str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    )


def load(side: Side, path: pathlib.Path, workdir: pathlib.Path) -> dict:
    """Start the destination and let it load ``path``: QEMU's verdict."""
    with _start(side, workdir, path.name + "-load", ["-incoming", "defer"]) as vm:
        status = vm.load_file(path)
        time.sleep(0.1)
    lines = [ln for ln in vm.log_path.read_text(errors="replace").splitlines() if ln.strip()]
    return {"loads": status == "completed", "status": status, "qemu_errors": lines}


def version_of(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return out.split("version", 1)[1].split()[0]


def make(case: Case, out: pathlib.Path) -> dict:
    """Write the pair's files into ``out``; return its verdict."""
    with tempfile.TemporaryDirectory(prefix="qevm-gen-check-") as tmp:
        work = pathlib.Path(tmp)
        src, dst = out / f"{case.name}.src.mig", out / f"{case.name}.dst.mig"
        save(case.src, src, work)
        save(case.dst, dst, work)
        dump_vmstate(case.dst, out / f"{case.name}.dst.vmstate.json")
        verdict = load(case.dst, src, work)
    verdict = {
        "name": case.name,
        "why": case.why,
        "src": [case.src.binary.rsplit("/", 1)[-1], *BASE, *case.src.args],
        "dst": [case.dst.binary.rsplit("/", 1)[-1], *BASE, *case.dst.args],
        "src_caps": case.src.caps,
        "dst_caps": case.dst.caps,
        "src_params": case.src.params,
        "dst_params": case.dst.params,
        "src_qemu": version_of(case.src.binary),
        "dst_qemu": version_of(case.dst.binary),
        **verdict,
    }
    (out / f"{case.name}.verdict.json").write_text(json.dumps(verdict, indent=1) + "\n")
    return verdict


def available(case: Case) -> bool:
    return all(shutil.which(s.binary) or os.path.exists(s.binary) for s in (case.src, case.dst))


def main(argv: list[str]) -> None:
    if argv[:1] == ["--tar"]:
        target = pathlib.Path(argv[1])
        with tempfile.TemporaryDirectory(prefix="qevm-pairs-") as tmp:
            out = pathlib.Path(tmp)
            names = []
            for case in cases():
                v = make(case, out)
                names.append(case.name)
                print(f"{case.name:22} loads={v['loads']!s:5} {(v['qemu_errors'] or [''])[0][:90]}")
            with tarfile.open(target, "w:xz", preset=9) as tar:
                for p in sorted(out.iterdir()):
                    tar.add(p, arcname=p.name)
        return
    out = pathlib.Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(argv[1:])
    for case in cases():
        if wanted and case.name not in wanted:
            continue
        v = make(case, out)
        print(f"{case.name:22} loads={v['loads']!s:5} {(v['qemu_errors'] or [''])[0][:90]}")


if __name__ == "__main__":
    main(sys.argv[1:])
