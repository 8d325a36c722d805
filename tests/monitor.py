"""Parse what QEMU's human monitor printed (the tests' independent truth).

``info pci``, ``info virtio-status``, ``info virtio-queue-status``, ``info
lapic`` and ``info pic`` (the I/O APIC table and the 8259s), written from
the formats in QEMU's hw/pci/pci-hmp-cmds.c, hw/virtio/virtio-hmp-cmds.c,
target/i386/cpu-dump.c, hw/intc/ioapic_common.c and hw/intc/i8259_common.c.
Nothing here uses qevm.
"""

from __future__ import annotations

import re

#: QEMU's pci_class_descriptions (hw/pci/pci.c): the name ``info pci`` prints for a class
PCI_CLASS_NAMES = {
    0x0001: "VGA controller",
    0x0100: "SCSI controller",
    0x0101: "IDE controller",
    0x0102: "Floppy controller",
    0x0103: "IPI controller",
    0x0104: "RAID controller",
    0x0106: "SATA controller",
    0x0107: "SAS controller",
    0x0180: "Storage controller",
    0x0200: "Ethernet controller",
    0x0201: "Token Ring controller",
    0x0202: "FDDI controller",
    0x0203: "ATM controller",
    0x0280: "Network controller",
    0x0300: "VGA controller",
    0x0301: "XGA controller",
    0x0302: "3D controller",
    0x0380: "Display controller",
    0x0400: "Video controller",
    0x0401: "Audio controller",
    0x0402: "Phone",
    0x0403: "Audio controller",
    0x0480: "Multimedia controller",
    0x0500: "RAM controller",
    0x0501: "Flash controller",
    0x0580: "Memory controller",
    0x0600: "Host bridge",
    0x0601: "ISA bridge",
    0x0602: "EISA bridge",
    0x0603: "MC bridge",
    0x0604: "PCI bridge",
    0x0605: "PCMCIA bridge",
    0x0606: "NUBUS bridge",
    0x0607: "CARDBUS bridge",
    0x0608: "RACEWAY bridge",
    0x0680: "Bridge",
    0x0700: "Serial port",
    0x0701: "Parallel port",
    0x0800: "Interrupt controller",
    0x0801: "DMA controller",
    0x0802: "Timer",
    0x0803: "RTC",
    0x0900: "Keyboard",
    0x0901: "Pen",
    0x0902: "Mouse",
    0x0A00: "Dock station",
    0x0B00: "i386 cpu",
    0x0C00: "Firewire controller",
    0x0C01: "Access bus controller",
    0x0C02: "SSA controller",
    0x0C03: "USB controller",
    0x0C04: "Fibre channel controller",
    0x0C05: "SMBus",
}


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").split("\n")


def class_matches(printed: str, code: int) -> bool:
    """Whether ``info pci``'s class text is what QEMU prints for class ``code``."""
    m = re.fullmatch(r"Class (\d{4})", printed)
    if m:
        return int(m.group(1)) == code and code not in PCI_CLASS_NAMES
    old_names = {0x0C00: "Fireware contorller"}
    return PCI_CLASS_NAMES.get(code) == printed or old_names.get(code) == printed


def parse_info_pci(text: str) -> list[dict]:
    devs: list[dict] = []
    cur: dict | None = None
    for line in _lines(text):
        m = re.match(r"\s*Bus\s+(\d+), device\s+(\d+), function (\d+):", line)
        if m:
            cur = {
                "bus": int(m.group(1)),
                "slot": int(m.group(2)),
                "function": int(m.group(3)),
                "bars": {},
            }
            devs.append(cur)
            continue
        if cur is None:
            continue
        s = line.strip()
        m = re.match(r"(.+): PCI device ([0-9a-f]{4}):([0-9a-f]{4})$", s)
        if m and "class" not in cur:
            cur["class"] = m.group(1)
            cur["vendor"], cur["device"] = int(m.group(2), 16), int(m.group(3), 16)
            continue
        m = re.match(r"PCI subsystem ([0-9a-f]{4}):([0-9a-f]{4})$", s)
        if m:
            cur["subsystem"] = (int(m.group(1), 16), int(m.group(2), 16))
            continue
        m = re.match(r"IRQ (\d+), pin ([A-D])$", s)
        if m:
            cur["irq"], cur["pin"] = int(m.group(1)), m.group(2)
            continue
        m = re.match(r"BUS (\d+)\.$", s)
        if m:
            cur["primary"] = int(m.group(1))
            continue
        m = re.match(r"(secondary|subordinate) bus (\d+)\.$", s)
        if m:
            cur[m.group(1)] = int(m.group(2))
            continue
        m = re.match(r"(IO|memory|prefetchable memory) range \[0x([0-9a-f]+), 0x([0-9a-f]+)\]$", s)
        if m:
            cur[m.group(1).split()[0].lower() + "_range"] = (
                int(m.group(2), 16),
                int(m.group(3), 16),
            )
            continue
        m = re.match(r"BAR(\d+): (.*)$", s)
        if m:
            cur["bars"][int(m.group(1))] = _bar(m.group(2))
    return devs


def _bar(text: str) -> dict:
    # QEMU <= 8.0 ends the line with "." and prints an unmapped BAR at PCI_BAR_UNMAPPED
    text = text.removesuffix(".")
    text = re.sub(r"at 0xffffffffffffffff \[0x[0-9a-f]+\]$", "(not mapped)", text)
    m = re.match(r"I/O at 0x([0-9a-f]+) \[0x([0-9a-f]+)\]$", text)
    if m:
        a, e = int(m.group(1), 16), int(m.group(2), 16)
        return {"kind": "io", "address": a, "size": e - a + 1}
    if text in ("I/O (not mapped)", "I/O at (not mapped)"):
        return {"kind": "io", "address": None}
    m = re.match(r"(32|64) bit( prefetchable)? memory (.*)$", text)
    assert m, text
    out = {"kind": "mem" + m.group(1), "prefetchable": bool(m.group(2))}
    rest = m.group(3)
    m = re.match(r"at 0x([0-9a-f]+) \[0x([0-9a-f]+)\]$", rest)
    if m:
        a, e = int(m.group(1), 16), int(m.group(2), 16)
        out.update(address=a, size=e - a + 1)
    else:
        assert rest in ("(not mapped)", "at (not mapped)"), rest
        out["address"] = None
    return out


def _feature_names(block: list[str]) -> tuple[list[str], int]:
    names, unknown = [], 0
    for line in block:
        s = line.strip()
        m = re.match(r"unknown-(?:features|statuses)\((0x[0-9a-f]+)\)", s)
        if m:
            unknown = int(m.group(1), 16)
            continue
        if ":" in s:
            names.append(s.split(":", 1)[0])
    return names, unknown


def parse_virtio_status(text: str) -> dict:
    out: dict = {}
    section = None
    blocks: dict[str, list[str]] = {}
    for line in _lines(text):
        s = line.strip()
        m = re.match(r"([a-z_]+):\s+(\S.*)$", s)
        if m and not line.startswith("\t") and section is None:
            out[m.group(1)] = m.group(2).strip()
            continue
        if s in ("status:", "Guest features:", "Host features:", "Backend features:"):
            section = s[:-1]
            blocks[section] = []
            continue
        if section and s:
            if s.startswith(("VIRTIO_", "VHOST_", "unknown-")):
                blocks[section].append(s)
                continue
            section = None
            m = re.match(r"([a-z_]+):\s+(\S.*)$", s)
            if m:
                out[m.group(1)] = m.group(2).strip()
    for key, block in blocks.items():
        out[key] = _feature_names(block)
    return out


def parse_queue_status(text: str) -> dict:
    out: dict = {}
    for line in _lines(text):
        m = re.match(r"\s*([a-z_]+):\s+(\S+)\s*$", line)
        if m:
            v = m.group(2)
            out[m.group(1)] = int(v, 0) if re.fullmatch(r"(0x)?[0-9a-f]+", v) else v
    return out


def parse_lapic(text: str) -> dict:
    out: dict = {}
    for line in _lines(text):
        s = line.strip()
        m = re.match(r"(LVT0|LVT1|LVTPC|LVTERR|LVTTHMR|LVTT)\s+0x([0-9a-f]{8})", s)
        if m:
            out[m.group(1).lower()] = int(m.group(2), 16)
            continue
        m = re.match(
            r"Timer\s+DCR=0x([0-9a-f]+) \(divide by (\d+)\) initial_count = (\d+)"
            r"(?: current_count = (\d+))?",
            s,
        )
        if m:
            out["dcr"], out["divide_by"] = int(m.group(1), 16), int(m.group(2))
            out["initial_count"] = int(m.group(3))
            if m.group(4) is not None:
                out["current_count"] = int(m.group(4))
            continue
        m = re.match(r"(SPIV|ICR|ICR2|ESR)\s+0x([0-9a-f]{8})", s)
        if m:
            out[{"SPIV": "spiv"}.get(m.group(1), m.group(1).lower())] = int(m.group(2), 16)
            continue
        m = re.match(r"(ISR|IRR)\s+(.*)$", s)
        if m:
            vals = [] if m.group(2).strip() == "(none)" else m.group(2).split()
            out[m.group(1).lower()] = [int(v.split("(")[0]) for v in vals]
            out[m.group(1).lower() + "_level"] = [
                int(v.split("(")[0]) for v in vals if "(level)" in v
            ]
            continue
        m = re.match(
            r"APR 0x([0-9a-f]+) TPR 0x([0-9a-f]+) DFR 0x([0-9a-f]+) LDR 0x([0-9a-f]+)"
            r".*PPR 0x([0-9a-f]+)",
            s,
        )
        if m:
            out["apr"], out["tpr"], out["dfr"], out["ldr"], out["ppr"] = (
                int(g, 16) for g in m.groups()
            )
    return out


def parse_info_pic(text: str) -> dict:
    """The I/O APIC table and the 8259s from ``info pic``."""
    out: dict = {"ioapic": None, "pins": {}, "pic": {}}
    for line in _lines(text):
        s = line.strip()
        m = re.match(r"ioapic\d*: ver=0x([0-9a-f]+) id=0x([0-9a-f]+) sel=0x([0-9a-f]+)", s)
        if m:
            out["ioapic"] = {"id": int(m.group(2), 16), "sel": int(m.group(3), 16)}
            continue
        m = re.match(
            r"pin (\d+)\s+0x([0-9a-f]{16}) dest=([0-9a-f]+) vec=(\d+)\s+(active-hi|active-lo) "
            r"(edge|level)\s+(masked)?\s*(\S+)\s+(logical|physical)$",
            s,
        )
        if m:
            out["pins"][int(m.group(1))] = {
                "entry": int(m.group(2), 16),
                "dest": int(m.group(3), 16),
                "vector": int(m.group(4)),
                "polarity": m.group(5),
                "trigger": m.group(6),
                "masked": m.group(7) is not None,
                "delivery_mode": m.group(8),
                "dest_mode": m.group(9),
            }
            continue
        m = re.match(r"(IRR|Remote IRR)\s+(.*)$", s)
        if m:
            v = m.group(2).strip()
            out[m.group(1).lower().replace(" ", "_")] = (
                [] if v == "(none)" else [int(x) for x in v.split()]
            )
            continue
        m = re.match(r"pic(\d): (.*)$", s)
        if m:
            out["pic"][int(m.group(1))] = {
                k: int(v, 16) if k in ("irr", "imr", "isr", "irq_base", "elcr") else int(v)
                for k, v in re.findall(r"(\w+)=([0-9a-f]+)", m.group(2))
            }
    return out
