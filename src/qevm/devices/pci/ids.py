"""Vendor, device, subsystem and class names from the PCI ID database (``pci.ids``).

The database is read from the local system (Debian's ``pci.ids`` package
installs ``/usr/share/misc/pci.ids``; ``$QEVM_PCI_IDS`` names another file).
Without it every lookup returns None and callers print numbers only.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

SEARCH_PATH = (
    "/usr/share/misc/pci.ids",
    "/usr/share/hwdata/pci.ids",
    "/usr/share/pci.ids",
    "/usr/local/share/pci.ids",
)


@dataclass
class PciIds:
    vendors: dict[int, str] = field(default_factory=dict)
    devices: dict[tuple[int, int], str] = field(default_factory=dict)
    subsystems: dict[tuple[int, int, int, int], str] = field(default_factory=dict)
    classes: dict[int, str] = field(default_factory=dict)
    subclasses: dict[tuple[int, int], str] = field(default_factory=dict)
    prog_ifs: dict[tuple[int, int, int], str] = field(default_factory=dict)
    path: str | None = None

    def vendor(self, vid: int) -> str | None:
        return self.vendors.get(vid)

    def device(self, vid: int, did: int) -> str | None:
        return self.devices.get((vid, did))

    def subsystem(self, vid: int, did: int, svid: int, sdid: int) -> str | None:
        return self.subsystems.get((vid, did, svid, sdid))

    def class_name(self, base: int, sub: int, prog: int | None = None) -> str | None:
        """The most precise name of a class code: prog-if, subclass or base class."""
        if prog is not None and (base, sub, prog) in self.prog_ifs:
            return self.prog_ifs[(base, sub, prog)]
        return self.subclasses.get((base, sub)) or self.classes.get(base)

    def subclass_name(self, base: int, sub: int) -> str | None:
        return self.subclasses.get((base, sub)) or self.classes.get(base)


def _parse(path: str) -> PciIds:
    ids = PciIds(path=path)
    vendor = device = cls = sub = None
    in_classes = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            try:
                if line.startswith("C "):
                    in_classes = True
                    cls = int(line[2:4], 16)
                    ids.classes[cls] = line[4:].strip()
                    continue
                if not line.startswith("\t"):
                    in_classes = False
                    vendor = int(line[:4], 16)
                    ids.vendors[vendor] = line[4:].strip()
                    continue
                if in_classes:
                    if line.startswith("\t\t") and cls is not None and sub is not None:
                        ids.prog_ifs[(cls, sub, int(line[2:4], 16))] = line[4:].strip()
                    elif cls is not None:
                        sub = int(line[1:3], 16)
                        ids.subclasses[(cls, sub)] = line[3:].strip()
                    continue
                if line.startswith("\t\t"):
                    if vendor is not None and device is not None:
                        svid, sdid = int(line[2:6], 16), int(line[7:11], 16)
                        ids.subsystems[(vendor, device, svid, sdid)] = line[11:].strip()
                elif vendor is not None:
                    device = int(line[1:5], 16)
                    ids.devices[(vendor, device)] = line[5:].strip()
            except ValueError:
                continue
    return ids


@functools.lru_cache(maxsize=1)
def database() -> PciIds:
    """The parsed database (empty, with ``path`` None, when none is installed)."""
    candidates = [os.environ["QEVM_PCI_IDS"]] if os.environ.get("QEVM_PCI_IDS") else []
    for path in [*candidates, *SEARCH_PATH]:
        if os.path.isfile(path):
            try:
                return _parse(path)
            except OSError:
                continue
    return PciIds()
