"""The CONFIGURATION record (0x07): machine type and validated capabilities.

QEMU writes it as raw VMState data of its built-in ``configuration`` VMSD
(savevm.c): ``u32 len`` + machine name, then optional subsections
``configuration/target-page-bits`` (2.8+), ``configuration/capabilities``
(4.0+) and ``configuration/uuid`` (4.2+).  Like QEMU's loader, qevm decides
which subsections are there by peeking at the marker and name, so the record
decodes without the JSON description (QEMU < 8.2 does not describe it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import FormatError, QevmError
from .format import SUBSECTION
from .vmstate.codec import Decoder
from .vmstate.desc import FieldDesc, VmsdDesc
from .vmstate.values import FieldValue, StateNode, SubsectionValue
from .wire import Reader

PREFIX = "configuration/"


def _builtin_subsection(name: str, r: Reader) -> VmsdDesc | None:
    """QEMU's own description of a configuration subsection (sizes from the wire)."""
    if name == PREFIX + "target-page-bits":
        return VmsdDesc(name, 1, [FieldDesc("target_page_bits", "uint32", 4)], [])
    if name == PREFIX + "uuid":
        return VmsdDesc(name, 1, [FieldDesc("uuid.data", "uint8", 1, count=16)], [])
    if name == PREFIX + "capabilities":
        # caps_count is needed to describe the array that follows it.
        head = r.peek(5)
        count = int.from_bytes(head[:4], "big")
        fields = [FieldDesc("caps_count", "uint32", 4)]
        if count and len(head) == 5:
            # QEMU records the first element's size for the whole array.
            fields.append(FieldDesc("capabilities", "capability", 1 + head[4], count=count))
        return VmsdDesc(name, 1, fields, [])
    return None


@dataclass(eq=False)
class Configuration:
    """What the configuration record says."""

    machine: str
    node: StateNode
    target_page_bits: int | None = None
    capabilities: list[str] = field(default_factory=list)
    uuid: bytes | None = None

    @property
    def page_size(self) -> int | None:
        return 1 << self.target_page_bits if self.target_page_bits is not None else None


def read_configuration(r: Reader, json_desc: VmsdDesc | None = None) -> Configuration:
    """Decode the configuration VMSD at the reader's position (after the 0x07 byte)."""
    start = r.offset
    length = r.u32()
    if length > 255:
        raise FormatError(
            f"machine type name of {length} bytes",
            offset=start,
            field="len",
            expected="at most 255 bytes",
        )
    name = r.bytes(length)
    fields = [
        FieldValue(FieldDesc("len", "uint32", 4), start, 4, length),
        FieldValue(FieldDesc("name", "buffer", length), start + 4, length, name),
    ]
    known = {s.vmsd_name: s for s in json_desc.subsections} if json_desc else {}
    subs: list[SubsectionValue] = []
    conf = Configuration(machine=name.decode("latin-1"), node=None)  # type: ignore[arg-type]
    dec = Decoder(r)
    while r.peek_u8() == SUBSECTION:
        head = r.peek(2 + 255)
        n = head[1] if len(head) > 1 else 0
        sub_name = head[2 : 2 + n].decode("latin-1")
        if n < len(PREFIX) or not sub_name.startswith(PREFIX):
            break
        off = r.offset
        r.skip(2 + n)
        version = r.u32()
        sdesc = _builtin_subsection(sub_name, r) or known.get(sub_name)
        if sdesc is None:
            raise FormatError(
                f"unknown configuration subsection {sub_name!r}",
                offset=off,
                section="configuration",
            )
        try:
            node = dec.vmsd(sdesc)
        except QevmError as e:
            raise e.located(section="configuration", field=sub_name) from None
        subs.append(SubsectionValue(sub_name, version, off, node))
        if sub_name == PREFIX + "target-page-bits":
            conf.target_page_bits = node.get("target_page_bits")
        elif sub_name == PREFIX + "capabilities":
            conf.capabilities = list(node.values("capabilities"))
        elif sub_name == PREFIX + "uuid":
            conf.uuid = bytes(node.values("uuid.data"))
    desc = VmsdDesc("configuration", 1, [f.desc for f in fields], [s.node.desc for s in subs])
    conf.node = StateNode(desc, start, r.offset - start, fields, subs)
    return conf
