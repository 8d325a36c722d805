"""``spapr/htab``: the pseries hash page table (hw/ppc/spapr.c, htab_save_*).

Every record starts with a u32: 0xffffffff when the guest has no HPT (radix),
otherwise ``htab_shift`` in START and 0 in PART/END, followed by chunks
``u32 index, u16 n_valid, u16 n_invalid, n_valid x 16-byte HPTEs`` up to an
all-zero chunk header.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import UnsupportedError
from .registry import SectionHandler, register

if TYPE_CHECKING:
    from ..stream import ParseContext, SectionEntry, SectionRecord

HASH_PTE_SIZE_64 = 16
NO_HPT = 0xFFFFFFFF


class HtabHandler(SectionHandler):
    patterns = ("spapr/htab",)
    title = "pseries hash page table"

    def read(self, ctx: ParseContext, entry: SectionEntry, rec: SectionRecord) -> Any:
        r = ctx.r
        if entry.version != 1:
            raise UnsupportedError(
                f"spapr/htab version {entry.version}", offset=rec.offset, expected="1"
            )
        header = r.u32()
        if header == NO_HPT:
            return {"hpt": False}
        if header:
            return {"htab_shift": header}
        chunks = valid = invalid = 0
        while True:
            index = r.u32()
            n_valid = r.u16()
            n_invalid = r.u16()
            if index == 0 and n_valid == 0 and n_invalid == 0:
                break
            r.skip(n_valid * HASH_PTE_SIZE_64)
            chunks += 1
            valid += n_valid
            invalid += n_invalid
        return {"chunks": chunks, "valid_hptes": valid, "invalid_hptes": invalid}


register(HtabHandler())
