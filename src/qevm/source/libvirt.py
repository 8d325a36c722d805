"""libvirt save images: ``virsh save``, managedsave and snapshot memory files.

The file is a 92-byte header (libvirt's ``virQEMUSaveHeader``), the domain
XML and an optional cookie XML, zero padding up to ``92 + data_len``, then the
QEMU stream: as QEMU wrote it (formats raw and sparse) or piped through one
compressor (gzip, bzip2, xz, lzop, zstd).  The header's integers are in the
writing host's byte order; like libvirt, a version that reads larger than 2
means the other byte order.
"""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from typing import Any

from ..errors import ContainerError, TruncatedError
from .base import Source
from .compress import decompressing

MAGIC_COMPLETE = b"LibvirtQemudSave"
MAGIC_PARTIAL = b"LibvirtQemudPart"
HEADER_SIZE = 92
#: QEMU_SAVE_VERSION in libvirt.
VERSION = 2
#: format codes of libvirt's virQEMUSaveFormat
FORMATS = ("raw", "gzip", "bzip2", "xz", "lzop", "zstd", "sparse")
COMPRESSED = frozenset({"gzip", "bzip2", "xz", "lzop", "zstd"})
#: The XML area libvirt writes is the XML plus 64 KiB; anything near this is not an image.
MAX_DATA_LEN = 64 << 20

_FIELDS = "IIIII"


def _read_exact(src: Source, offset: int, n: int, what: str) -> bytes:
    """``n`` bytes at absolute ``offset`` (the current position for streams)."""
    if src.seekable:
        size = src.size or 0
        if offset + n > size:
            raise TruncatedError(
                f"libvirt save image ends inside the {what}: {max(0, size - offset)} of "
                f"{n} bytes present",
                offset=offset,
                expected=f"{n} bytes of {what}",
            )
        return bytes(src.read_at(offset, n))
    data = src.read(n)
    if len(data) != n:
        raise TruncatedError(
            f"libvirt save image ends inside the {what}: {len(data)} of {n} bytes present",
            offset=offset,
            expected=f"{n} bytes of {what}",
        )
    return data


def parse_header(head: bytes, base: int = 0) -> dict[str, Any]:
    """The fields of a 92-byte libvirt save header (``base``: its offset, for errors)."""
    magic = head[:16]
    if magic not in (MAGIC_COMPLETE, MAGIC_PARTIAL):
        raise ContainerError(
            f"not a libvirt save image: magic {magic!r}",
            offset=base,
            expected="'LibvirtQemudSave' or 'LibvirtQemudPart'",
        )
    order = "little"
    version, data_len, was_running, fmt, cookie_off = struct.unpack_from("<" + _FIELDS, head, 16)
    if version > VERSION:
        order = "big"
        version, data_len, was_running, fmt, cookie_off = struct.unpack_from(
            ">" + _FIELDS, head, 16
        )
    if not 1 <= version <= VERSION:
        raise ContainerError(
            f"libvirt save image version {version} is not supported",
            offset=base + 16,
            expected="version 1 or 2",
        )
    if version == 1:
        # Version 1 images predate compression; libvirt ignores the field.
        fmt = 0
    if fmt >= len(FORMATS):
        raise ContainerError(
            f"unknown libvirt save image format {fmt}",
            offset=base + 28,
            expected=f"0..{len(FORMATS) - 1} ({', '.join(FORMATS)})",
        )
    if data_len == 0 or data_len > MAX_DATA_LEN:
        raise ContainerError(
            f"libvirt header data_len {data_len} is implausible",
            offset=base + 20,
            expected=f"1..{MAX_DATA_LEN} bytes of XML and padding",
        )
    if cookie_off > data_len:
        raise ContainerError(
            f"cookie offset {cookie_off} lies past the {data_len} bytes of XML data",
            offset=base + 32,
            expected=f"at most {data_len}",
        )
    return {
        "complete": magic == MAGIC_COMPLETE,
        "version": version,
        "byte_order": order,
        "data_len": data_len,
        "was_running": bool(was_running),
        "format": FORMATS[fmt],
        "cookie_offset": cookie_off,
    }


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
    head = _read_exact(src, base, HEADER_SIZE, "header")
    hdr = parse_header(head, base)
    data = _read_exact(src, base + HEADER_SIZE, hdr["data_len"], "domain XML")
    cookie_off = hdr["cookie_offset"]
    xml = _cstring(data[:cookie_off] if cookie_off else data)
    cookie = _cstring(data[cookie_off:]) if cookie_off else None
    if not xml:
        raise ContainerError(
            "the libvirt save image holds no domain XML",
            offset=base + HEADER_SIZE,
            expected="the NUL-terminated domain XML",
        )
    name, uuid = domain_identity(xml)
    stream_at = base + HEADER_SIZE + hdr["data_len"]
    fmt = hdr["format"]

    # Keys stay within 11 characters: `qevm info` aligns them in a 12-column field.
    info: dict[str, Any] = dict(src.info)
    info.update(
        domain=name,
        uuid=uuid,
        format=fmt,
        was_running=hdr["was_running"],
        version=hdr["version"],
        complete=hdr["complete"],
        byte_order=hdr["byte_order"],
        stream_at=stream_at,
        xml=xml,
        cookie=cookie,
    )
    outer = src.container
    container = f"libvirt save image ({fmt})"
    if not hdr["complete"]:
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
