"""Names of configuration-space registers: what byte ``i`` of a config space is."""

from __future__ import annotations

from . import caps, express, header

_HEADER_NAMES = [
    (0x00, 2, "Vendor ID"),
    (0x02, 2, "Device ID"),
    (0x04, 2, "Command"),
    (0x06, 2, "Status"),
    (0x08, 1, "Revision ID"),
    (0x09, 1, "Programming Interface"),
    (0x0A, 2, "Class"),
    (0x0C, 1, "Cache Line Size"),
    (0x0D, 1, "Latency Timer"),
    (0x0E, 1, "Header Type"),
    (0x0F, 1, "BIST"),
    (0x34, 1, "Capabilities Pointer"),
    (0x3C, 1, "Interrupt Line"),
    (0x3D, 1, "Interrupt Pin"),
]
_TYPE0_NAMES = [
    *((0x10 + 4 * i, 4, f"BAR{i}") for i in range(6)),
    (0x28, 4, "CardBus CIS Pointer"),
    (0x2C, 2, "Subsystem Vendor ID"),
    (0x2E, 2, "Subsystem ID"),
    (0x30, 4, "Expansion ROM"),
    (0x3E, 1, "Min Grant"),
    (0x3F, 1, "Max Latency"),
]
_TYPE1_NAMES = [
    (0x10, 4, "BAR0"),
    (0x14, 4, "BAR1"),
    (0x18, 1, "Primary Bus"),
    (0x19, 1, "Secondary Bus"),
    (0x1A, 1, "Subordinate Bus"),
    (0x1B, 1, "Secondary Latency Timer"),
    (0x1C, 1, "I/O Base"),
    (0x1D, 1, "I/O Limit"),
    (0x1E, 2, "Secondary Status"),
    (0x20, 2, "Memory Base"),
    (0x22, 2, "Memory Limit"),
    (0x24, 2, "Prefetchable Memory Base"),
    (0x26, 2, "Prefetchable Memory Limit"),
    (0x28, 4, "Prefetchable Base Upper 32"),
    (0x2C, 4, "Prefetchable Limit Upper 32"),
    (0x30, 2, "I/O Base Upper 16"),
    (0x32, 2, "I/O Limit Upper 16"),
    (0x38, 4, "Expansion ROM"),
    (0x3E, 2, "Bridge Control"),
]
_CAP_REGS = {
    caps.CAP_PM: [(2, 2, "PMC"), (4, 2, "PMCSR"), (6, 1, "Bridge Extensions"), (7, 1, "Data")],
    caps.CAP_MSIX: [
        (2, 2, "Message Control"),
        (4, 4, "Table Offset/BIR"),
        (8, 4, "PBA Offset/BIR"),
    ],
    caps.CAP_SSVID: [(4, 2, "Subsystem Vendor ID"), (6, 2, "Subsystem ID")],
    caps.CAP_VNDR: [
        (2, 1, "Length"),
        (3, 1, "cfg_type"),
        (4, 1, "BAR"),
        (5, 1, "id"),
        (8, 4, "offset"),
        (12, 4, "length"),
        (16, 4, "notify_off_multiplier / data"),
    ],
    caps.CAP_EXP: [
        (2, 2, "Capabilities"),
        (4, 4, "Device Capabilities"),
        (8, 2, "Device Control"),
        (10, 2, "Device Status"),
        (12, 4, "Link Capabilities"),
        (16, 2, "Link Control"),
        (18, 2, "Link Status"),
        (20, 4, "Slot Capabilities"),
        (24, 2, "Slot Control"),
        (26, 2, "Slot Status"),
        (28, 2, "Root Control"),
        (30, 2, "Root Capabilities"),
        (32, 4, "Root Status"),
        (36, 4, "Device Capabilities 2"),
        (40, 2, "Device Control 2"),
        (42, 2, "Device Status 2"),
        (44, 4, "Link Capabilities 2"),
        (48, 2, "Link Control 2"),
        (50, 2, "Link Status 2"),
    ],
}
_EXT_REGS = {
    express.EXT_AER: [
        (4, 4, "Uncorrectable Error Status"),
        (8, 4, "Uncorrectable Error Mask"),
        (12, 4, "Uncorrectable Error Severity"),
        (16, 4, "Correctable Error Status"),
        (20, 4, "Correctable Error Mask"),
        (24, 4, "Capabilities and Control"),
        (28, 16, "Header Log"),
        (44, 4, "Root Error Command"),
        (48, 4, "Root Error Status"),
        (52, 4, "Error Source Identification"),
    ],
}


def _lookup(regs: list[tuple[int, int, str]], rel: int) -> str | None:
    for off, width, name in regs:
        if off <= rel < off + width:
            return f"{name} (byte {rel - off})" if width > 1 else name
    return None


def register_name(cfg: bytes, i: int) -> str:
    """What config byte ``i`` is: ``MSI-X capability at 0x98: Message Control (byte 0)``."""
    if i < 0x40:
        table = _HEADER_NAMES + (_TYPE1_NAMES if header.header_type(cfg) == 1 else _TYPE0_NAMES)
        return _lookup(table, i) or f"header byte {i:#x}"
    if i < 0x100:
        best = None
        for pos, cid in caps.walk(cfg):
            if pos <= i and (best is None or pos > best[0]):
                best = (pos, cid)
        if best is not None:
            pos, cid = best
            name = caps.CAP_NAMES.get(cid, f"capability {cid:#04x}")
            reg = _lookup([(0, 1, "ID"), (1, 1, "Next")] + _CAP_REGS.get(cid, []), i - pos)
            return f"{name} capability at {pos:#x}: " + (reg or f"byte {i - pos}")
        return f"device-specific byte {i:#x}"
    best_ext = None
    for pos, cid, _ in express.walk_ext(cfg):
        if pos <= i and (best_ext is None or pos > best_ext[0]):
            best_ext = (pos, cid)
    if best_ext is not None:
        pos, cid = best_ext
        name = express.EXT_NAMES.get(cid, f"extended capability {cid:#06x}")
        reg = _lookup([(0, 4, "Header")] + _EXT_REGS.get(cid, []), i - pos)
        return f"{name} capability at {pos:#x}: " + (reg or f"byte {i - pos}")
    return f"extended config byte {i:#x}"
