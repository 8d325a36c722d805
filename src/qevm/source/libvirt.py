"""libvirt save images: ``virsh save``, managedsave and snapshot memory files.

The file is a 92-byte header (libvirt's ``virQEMUSaveHeader``), the domain
XML and an optional cookie XML, zero padding up to ``92 + data_len``, then the
QEMU stream: as QEMU wrote it (formats raw and sparse) or piped through one
compressor (gzip, bzip2, xz, lzop, zstd).  The header's integers are in the
writing host's byte order; like libvirt, a version that reads larger than 2
means the other byte order.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from ..errors import ContainerError
from ..fileio import read_exact
from ..structs import CStruct
from .base import Source
from .compress import decompressing

MAGIC_COMPLETE = b"LibvirtQemudSave"
MAGIC_PARTIAL = b"LibvirtQemudPart"
#: QEMU_SAVE_VERSION in libvirt.
VERSION = 2
#: format codes of libvirt's virQEMUSaveFormat
FORMATS = ("raw", "gzip", "bzip2", "xz", "lzop", "zstd", "sparse")
COMPRESSED = frozenset({"gzip", "bzip2", "xz", "lzop", "zstd"})
#: The XML area libvirt writes is the XML plus 64 KiB; anything near this is not an image.
MAX_DATA_LEN = 64 << 20
IMAGE = "libvirt save image"


class VirQEMUSaveHeader(
    CStruct,
    fields="""
        char magic[16];         /* QEMU_SAVE_MAGIC or QEMU_SAVE_PARTIAL */
        uint32_t version;
        uint32_t data_len;      /* domain XML, cookie and padding */
        uint32_t was_running;
        uint32_t format;        /* virQEMUSaveFormat (called compressed before) */
        uint32_t cookieOffset;  /* in the data, 0 for none */
        uint32_t unused[14];
    """,
    byte_order="<",
):
    """libvirt's save image header (qemu_saveimage.h: virQEMUSaveHeader), in the host's order."""

    error_class = ContainerError

    @property
    def complete(self) -> bool:
        """False for an image libvirt did not finish writing (``LibvirtQemudPart``)."""
        return self.magic == MAGIC_COMPLETE

    @property
    def format_name(self) -> str:
        # Version 1 images predate compression; libvirt ignores the field.
        return FORMATS[self.format] if self.version > 1 else "raw"


def parse_header(head: bytes, base: int = 0) -> VirQEMUSaveHeader:
    """The libvirt save header at the start of ``head`` (read from offset ``base``), checked."""
    hdr = VirQEMUSaveHeader.unpack(head, base)
    if hdr.magic not in (MAGIC_COMPLETE, MAGIC_PARTIAL):
        raise ContainerError(
            f"not a libvirt save image: magic {hdr.magic!r}",
            offset=base,
            expected="'LibvirtQemudSave' or 'LibvirtQemudPart'",
        )
    if hdr.version > VERSION:
        # like libvirt: a version too large to be ours is the other byte order
        hdr = VirQEMUSaveHeader.unpack(head, base, byte_order=">")
    if not 1 <= hdr.version <= VERSION:
        raise hdr.error(
            "version",
            f"libvirt save image version {hdr.version} is not supported",
            expected="version 1 or 2",
        )
    if hdr.version > 1 and hdr.format >= len(FORMATS):
        raise hdr.error(
            "format",
            f"unknown libvirt save image format {hdr.format}",
            expected=f"0..{len(FORMATS) - 1} ({', '.join(FORMATS)})",
        )
    if hdr.data_len == 0 or hdr.data_len > MAX_DATA_LEN:
        raise hdr.error(
            "data_len",
            f"libvirt header data_len {hdr.data_len} is implausible",
            expected=f"1..{MAX_DATA_LEN} bytes of XML and padding",
        )
    if hdr.cookieOffset > hdr.data_len:
        raise hdr.error(
            "cookieOffset",
            f"cookie offset {hdr.cookieOffset} lies past the {hdr.data_len} bytes of XML data",
            expected=f"at most {hdr.data_len}",
        )
    return hdr


def _cstring(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


def domain_identity(xml: str) -> tuple[str | None, str | None]:
    """The domain's ``<name>`` and ``<uuid>`` from its XML (None when absent or unparsable)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    if root.tag != "domain":
        return None, None
    name = root.findtext("name")
    uuid = root.findtext("uuid")
    return (name.strip() if name else None), (uuid.strip() if uuid else None)


def open_libvirt(src: Source) -> Source:
    """The QEMU stream inside the libvirt save image ``src``.

    Raw and sparse images give ``src`` itself starting at the stream, so offsets
    stay absolute file offsets (mapped-ram offsets in sparse images count from
    the start of the file); compressed ones give a decompressing stream.
    ``info`` carries the header fields, the domain name, UUID, XML and cookie.
    """
    base = src.start if src.seekable else src.position
    head = read_exact(src, base, VirQEMUSaveHeader.size, "header", where=IMAGE)
    hdr = parse_header(head, base)
    data = read_exact(src, base + hdr.size, hdr.data_len, "domain XML", where=IMAGE)
    cookie_off = hdr.cookieOffset
    xml = _cstring(data[:cookie_off] if cookie_off else data)
    cookie = _cstring(data[cookie_off:]) if cookie_off else None
    if not xml:
        raise ContainerError(
            "the libvirt save image holds no domain XML",
            offset=base + hdr.size,
            expected="the NUL-terminated domain XML",
        )
    name, uuid = domain_identity(xml)
    stream_at = base + hdr.size + hdr.data_len
    fmt = hdr.format_name

    # Keys stay within 11 characters: `qevm info` aligns them in a 12-column field.
    info: dict[str, Any] = dict(src.info)
    info.update(
        domain=name,
        uuid=uuid,
        format=fmt,
        was_running=bool(hdr.was_running),
        version=hdr.version,
        complete=hdr.complete,
        byte_order="big" if hdr.byte_order == ">" else "little",
        stream_at=stream_at,
        xml=xml,
        cookie=cookie,
    )
    outer = src.container
    container = f"libvirt save image ({fmt})"
    if not hdr.complete:
        container += ", incomplete"
    if outer != "raw stream":
        container += f" in {outer}"

    src.start = stream_at
    if src.seekable:
        seek = getattr(src, "seek", None)
        if seek is not None:
            seek(stream_at)
        else:
            src.skip(stream_at - src.position)
    src.info = info
    src.container = container
    if fmt in COMPRESSED:
        inner = decompressing(src, fmt)
        inner.name = src.name
        inner.container = container
        inner.info = dict(info)
        return inner
    return src
