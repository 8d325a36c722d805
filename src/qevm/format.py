"""Constants of the migration wire format, as QEMU's savevm.h, savevm.c and ram.c define them.

Every module that reads or writes the stream takes these numbers from here;
none defines them again.  Names are QEMU's: the record types without their
``QEMU_VM_`` prefix, ``MIG_CMD_*`` and ``RAM_SAVE_FLAG_*`` as they are.
Numbers that belong to one special section alone (the block, dirty-bitmap,
s390, HTAB and vfio formats) stay with that section's handler, as QEMU keeps
them in its .c file.  The stream's fixed headers (mapped-ram, multifd) are
declared here too, once, with QEMU's field names (see :mod:`qevm.structs`).
"""

from __future__ import annotations

from .structs import CStruct

# -- the file header (savevm.c) --------------------------------------------------------
FILE_MAGIC = 0x5145564D  # "QEVM"
FILE_VERSION = 3
#: The obsolete version 2 (QEMU before 0.10), which QEMU refuses.
FILE_VERSION_COMPAT = 2

# -- record types (savevm.h) -------------------------------------------------------------
EOF = 0x00
SECTION_START = 0x01
SECTION_PART = 0x02
SECTION_END = 0x03
SECTION_FULL = 0x04
SUBSECTION = 0x05
VMDESCRIPTION = 0x06
CONFIGURATION = 0x07
COMMAND = 0x08
SECTION_FOOTER = 0x7E

SECTION_TYPE_NAMES = {
    SECTION_START: "START",
    SECTION_PART: "PART",
    SECTION_END: "END",
    SECTION_FULL: "FULL",
}

# -- commands (savevm.c: enum qemu_vm_cmd, as written on the wire) --------------------------
MIG_CMD_OPEN_RETURN_PATH = 1
MIG_CMD_PING = 2
MIG_CMD_POSTCOPY_ADVISE = 3
MIG_CMD_POSTCOPY_LISTEN = 4
MIG_CMD_POSTCOPY_RUN = 5
MIG_CMD_POSTCOPY_RAM_DISCARD = 6
MIG_CMD_PACKAGED = 7
MIG_CMD_ENABLE_COLO = 8
MIG_CMD_POSTCOPY_RESUME = 9
MIG_CMD_RECV_BITMAP = 10
MIG_CMD_SWITCHOVER_START = 11

# -- vmstate (vmstate-types.c) ------------------------------------------------------------
#: The byte QEMU writes for a NULL element of an array of pointers.
VMS_NULLPTR_MARKER = 0x30

# -- RAM records (ram.c) ----------------------------------------------------------------------
RAM_SAVE_FLAG_FULL = 0x001
RAM_SAVE_FLAG_ZERO = 0x002
RAM_SAVE_FLAG_MEM_SIZE = 0x004
RAM_SAVE_FLAG_PAGE = 0x008
RAM_SAVE_FLAG_EOS = 0x010
RAM_SAVE_FLAG_CONTINUE = 0x020
RAM_SAVE_FLAG_XBZRLE = 0x040
RAM_SAVE_FLAG_HOOK = 0x080
RAM_SAVE_FLAG_COMPRESS_PAGE = 0x100
RAM_SAVE_FLAG_MULTIFD_FLUSH = 0x200

#: Every flag value QEMU has used fits below this (targets' pages are >= 1 KiB).
RAM_SAVE_FLAG_BITS = 0x3FF

RAM_SAVE_FLAG_NAMES = {
    RAM_SAVE_FLAG_ZERO: "ZERO",
    RAM_SAVE_FLAG_MEM_SIZE: "MEM_SIZE",
    RAM_SAVE_FLAG_PAGE: "PAGE",
    RAM_SAVE_FLAG_EOS: "EOS",
    RAM_SAVE_FLAG_XBZRLE: "XBZRLE",
    RAM_SAVE_FLAG_HOOK: "HOOK",
    RAM_SAVE_FLAG_COMPRESS_PAGE: "COMPRESS_PAGE",
    RAM_SAVE_FLAG_MULTIFD_FLUSH: "MULTIFD_FLUSH",
}

#: Record kinds that carry a page of a block (and so a block name or CONTINUE).
RAM_PAGE_KINDS = frozenset(
    {RAM_SAVE_FLAG_ZERO, RAM_SAVE_FLAG_PAGE, RAM_SAVE_FLAG_XBZRLE, RAM_SAVE_FLAG_COMPRESS_PAGE}
)

#: The only encoding byte QEMU writes before an XBZRLE delta (ENCODING_FLAG_XBZRLE).
ENCODING_FLAG_XBZRLE = 0x01

# -- mapped-ram (ram.c) ------------------------------------------------------------------------
MAPPED_RAM_HDR_VERSION = 1
#: MAPPED_RAM_FILE_OFFSET_ALIGNMENT: where a block's pages start.
MAPPED_RAM_FILE_OFFSET_ALIGNMENT = 1 << 20

# -- multifd (multifd.h, multifd.c) ---------------------------------------------------------------
MULTIFD_MAGIC = 0x11223344
MULTIFD_VERSION = 1
#: Bytes of RAM one multifd packet carries at most (MULTIFD_PACKET_SIZE).
MULTIFD_PACKET_SIZE = 512 * 1024

MULTIFD_FLAG_SYNC = 1 << 0
MULTIFD_FLAG_COMPRESSION_MASK = 0x1F << 1
MULTIFD_FLAG_DEVICE_STATE = 32 << 1
MULTIFD_COMPRESSION = {
    0: "none",
    1 << 1: "zlib",
    2 << 1: "zstd",
    4 << 1: "qpl",
    8 << 1: "uadk",
    16 << 1: "qatzip",
}


class MappedRamHeader(
    CStruct,
    fields="""
        uint32_t version;
        uint64_t page_size;      /* the target's, for the bitmap's length */
        uint64_t bitmap_offset;  /* in the migration file */
        uint64_t pages_offset;   /* in the migration file */
    """,
):
    """The header after each block's MEM_SIZE entry with mapped-ram (ram.c: MappedRamHeader)."""

    @property
    def in_stream(self) -> bool:
        """False for a block x-ignore-shared leaves out (no bitmap, no pages)."""
        return not (self.bitmap_offset == 0 and self.pages_offset == 0)


class MultiFDInit(
    CStruct,
    fields="""
        uint32_t magic;
        uint32_t version;
        unsigned char uuid[16];  /* QemuUUID of the source */
        uint8_t id;              /* channel number */
        uint8_t unused1[7];
        uint64_t unused2[4];
    """,
):
    """The handshake that opens a multifd channel (multifd.c: MultiFDInit_t)."""


# Packets start with MultiFDPacketHdr_t { magic, version, flags }, spelled out
# in each packet kind here.  QEMU before 9.0 called normal_pages pages_used and
# had uint64_t unused[4] where zero_pages and the unused fields are (0 then).
class MultiFDPacket(
    CStruct,
    fields="""
        uint32_t magic;
        uint32_t version;
        uint32_t flags;
        uint32_t pages_alloc;       /* entries of the offset[] array that follows */
        uint32_t normal_pages;      /* pages in the payload */
        uint32_t next_packet_size;  /* bytes of payload */
        uint64_t packet_num;
        uint32_t zero_pages;        /* pages after the normal ones in offset[] */
        uint32_t unused32[1];
        uint64_t unused64[3];
        char ramblock[256];
        /* uint64_t offset[pages_alloc]; */
    """,
):
    """A multifd RAM packet's header (multifd.h: MultiFDPacket_t), up to its page offsets."""

    @property
    def block_name(self) -> str:
        return self.ramblock.split(b"\0")[0].decode("latin-1")


class MultiFDPacketDeviceState(
    CStruct,
    fields="""
        uint32_t magic;
        uint32_t version;
        uint32_t flags;             /* MULTIFD_FLAG_DEVICE_STATE set */
        char idstr[256];
        uint32_t instance_id;
        uint32_t next_packet_size;  /* bytes of device state that follow */
    """,
):
    """A multifd device state packet's header (multifd.h: MultiFDPacketDeviceState_t)."""

    @property
    def device_name(self) -> str:
        return self.idstr.split(b"\0")[0].decode("latin-1")
