"""``<device>/vfio``: VFIO device migration (hw/vfio/migration.c).

START/PART/END hold u64 markers: SETUP_STATE, DATA_STATE with a u64-sized
opaque buffer from the kernel driver, INIT_DATA_SENT, CONFIG_LOAD_READY, up
to END_OF_STATE.  The FULL section (config space) is old-style and is read
through the description's ``data`` buffer like any device section.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import FormatError
from ..format import SECTION_FULL
from . import SectionHandler, register

if TYPE_CHECKING:
    from ..stream import ParseContext, SectionEntry, SectionRecord

END_OF_STATE = 0xFFFFFFFFEF100001
DEV_CONFIG_STATE = 0xFFFFFFFFEF100002
DEV_SETUP_STATE = 0xFFFFFFFFEF100003
DEV_DATA_STATE = 0xFFFFFFFFEF100004
DEV_INIT_DATA_SENT = 0xFFFFFFFFEF100005
DEV_CONFIG_LOAD_READY = 0xFFFFFFFFEF100006


class VfioHandler(SectionHandler):
    patterns = ("*/vfio",)
    title = "VFIO device state"

    def reads(self, rec_type: int) -> bool:
        return rec_type != SECTION_FULL

    def read(self, ctx: ParseContext, entry: SectionEntry, rec: SectionRecord) -> Any:
        r = ctx.r
        data = chunks = 0
        markers = []
        while True:
            off = r.offset
            v = r.u64()
            if v == END_OF_STATE:
                markers.append("END_OF_STATE")
                break
            if v == DEV_DATA_STATE:
                size = r.u64()
                r.skip(size)
                chunks += 1
                data += size
            elif v == DEV_SETUP_STATE:
                markers.append("SETUP_STATE")
            elif v == DEV_INIT_DATA_SENT:
                markers.append("INIT_DATA_SENT")
                break
            elif v == DEV_CONFIG_LOAD_READY:
                markers.append("CONFIG_LOAD_READY")
            else:
                raise FormatError(
                    f"vfio marker {v:#018x}", offset=off, expected="a VFIO_MIG_FLAG_* marker"
                )
        return {"markers": markers, "data_chunks": chunks, "data_bytes": data}


register(VfioHandler())
