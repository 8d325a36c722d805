"""s390x sections: storage attributes (CMMA), storage keys and the TOD clock.

``s390-storage_attributes`` is live (hw/s390x/s390-stattrib.c): records
``u64 gfn<<12 | flags`` — MORE carries ``u64 count`` attribute bytes, DONE
ends pre-copy, EOS ends each section.  ``s390-skeys`` (s390-skeys.c) and
``todclock`` (tod.c) are old-style FULL sections the description only calls
``data``; qevm decodes them as well.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import FormatError
from .registry import SectionHandler, register

if TYPE_CHECKING:
    from ..stream import ParseContext, SectionEntry, SectionRecord

S390_PAGE_MASK = 0xFFF

STATTR_EOS = 0x01
STATTR_MORE = 0x02
STATTR_ERROR = 0x04
STATTR_DONE = 0x08

SKEYS_EOS = 0x01
SKEYS_SKEYS = 0x02
SKEYS_ERROR = 0x04

TOD_PRESENT = 0x01
TOD_MISSING = 0x00


class StorageAttributesHandler(SectionHandler):
    patterns = ("s390-storage_attributes",)
    title = "s390 storage attributes (CMMA)"

    def read(self, ctx: ParseContext, entry: SectionEntry, rec: SectionRecord) -> Any:
        r = ctx.r
        ranges = attrs = 0
        done = False
        while True:
            off = r.offset
            v = r.u64()
            flags = v & S390_PAGE_MASK
            if flags == STATTR_EOS:
                break
            if flags == STATTR_MORE:
                count = r.u64()
                r.skip(count)
                ranges += 1
                attrs += count
            elif flags == STATTR_DONE:
                done = True
            elif flags == STATTR_ERROR:
                raise FormatError("the source reported an error in storage attributes", offset=off)
            else:
                raise FormatError(
                    f"storage attribute flags {flags:#x}", offset=off, expected="EOS, MORE or DONE"
                )
        out: dict[str, Any] = {"ranges": ranges, "attributes": attrs}
        if done:
            out["done"] = True
        return out


class StorageKeysHandler(SectionHandler):
    patterns = ("s390-skeys",)
    title = "s390 storage keys"
    described = True

    def read(self, ctx: ParseContext, entry: SectionEntry, rec: SectionRecord) -> Any:
        r = ctx.r
        ranges = []
        while True:
            off = r.offset
            v = r.u64()
            flags = v & S390_PAGE_MASK
            if flags == SKEYS_EOS:
                return {"ranges": ranges}
            if flags == SKEYS_ERROR:
                return {"ranges": ranges, "error": "storage key data is incomplete"}
            if flags != SKEYS_SKEYS:
                raise FormatError(
                    f"storage key flags {flags:#x}",
                    offset=off,
                    expected="EOS (1), SKEYS (2) or ERROR (4)",
                )
            pages = r.u64()
            r.skip(pages)
            ranges.append({"start": v & ~S390_PAGE_MASK, "pages": pages})


class TodClockHandler(SectionHandler):
    patterns = ("todclock",)
    title = "s390 TOD clock"
    described = True

    def read(self, ctx: ParseContext, entry: SectionEntry, rec: SectionRecord) -> Any:
        r = ctx.r
        off = r.offset
        state = r.u8()
        if state == TOD_MISSING:
            return {"present": False}
        if state != TOD_PRESENT:
            raise FormatError(
                f"TOD clock state {state:#04x}", offset=off, expected="0 (missing) or 1 (present)"
            )
        high = r.u8()
        low = r.u64()
        return {"present": True, "high": high, "low": low}


register(StorageAttributesHandler())
register(StorageKeysHandler())
register(TodClockHandler())
