"""Converting a stream into a plain single-pass stream.

``qevm convert --to stream`` turns a mapped-ram file, a stream with several
RAM passes (XBZRLE, compressed pages, re-sent pages), a multifd migration
with its recorded channels, or a postcopy stream into the kind of stream
``migrate "exec:cat > f"`` writes for a stopped VM: one RAM pass with every
page once, as ZERO or PAGE records, in block order.

* RAM comes from the page index (the latest content of every page): the RAM
  START section holds the block list (MEM_SIZE, without mapped-ram headers
  or postcopy page sizes), one PART section every page, an END section the
  final EOS; all three sit where the RAM START section was, so RAM is loaded
  before any device.  Other RAM sections are left out.
* The ``mapped-ram`` capability is dropped from the configuration section and
  from the JSON description's copy of it (QEMU leaves the capabilities
  subsection out when no validated capability remains).
* Commands that need a live destination (return path, pings, postcopy, COLO)
  are left out; a PACKAGED blob's records are written in its place.
* Device sections and the other live sections are written unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .commands import COMMANDS
from .errors import UsageError
from .format import (
    MIG_CMD_PACKAGED,
    RAM_SAVE_FLAG_EOS,
    RAM_SAVE_FLAG_MEM_SIZE,
    SECTION_END,
    SECTION_FOOTER,
    SECTION_PART,
    SECTION_START,
)
from .sections.ram.blocks import RamBlock
from .sections.ram.index import ABSENT_RUN, DATA_RUN, ZERO_RUN
from .sections.ram.write import (
    write_mem_size_entry,
    write_page,
    write_record_head,
    write_zero_run,
)
from .stream import (
    CommandRecord,
    Record,
    SectionEntry,
    SectionRecord,
)
from .vmstate.desc import FieldDesc, JsonObject
from .wire import RELEASE_STEP, Writer
from .writer import StreamWriter

if TYPE_CHECKING:
    from .configuration import Configuration
    from .migration import Migration

#: Commands a plain stream does not carry.
DROPPED_COMMANDS = frozenset(cmd for cmd, spec in COMMANDS.items() if spec.live)
#: Capabilities a plain stream cannot have.
DROPPED_CAPABILITIES = ("mapped-ram",)
CAPS = "configuration/capabilities"


def drop_capabilities(mig: Migration, names: tuple[str, ...] = DROPPED_CAPABILITIES) -> list[str]:
    """Remove capabilities from the configuration section and the description."""
    conf = mig.configuration
    if conf is None:
        return []
    dropped = [c for c in conf.capabilities if c in names]
    if not dropped:
        return []
    left = [c for c in conf.capabilities if c not in names]
    _drop_from_node(conf, left)
    desc = mig.description
    if desc is not None and isinstance(desc.raw.get("configuration"), JsonObject):
        _drop_from_json(desc.raw["configuration"], left)
        if desc.configuration is not None and not left:
            desc.configuration.subsections = [
                s for s in desc.configuration.subsections if s.vmsd_name != CAPS
            ]
        desc.modified = True
    return dropped


def _drop_from_node(conf: Configuration, left: list[str]) -> None:
    node = conf.node
    subs = [s for s in node.subsections if s.name == CAPS]
    if not subs:
        return
    sub = subs[0]
    conf.capabilities = left
    if not left:
        node.subsections.remove(sub)
        node.desc.subsections = [s for s in node.desc.subsections if s is not sub.node.desc]
        return
    count = sub.node.field("caps_count")
    caps = sub.node.field("capabilities")
    assert count is not None and caps is not None
    count.value = len(left)
    old = caps.desc
    caps.desc = FieldDesc(old.name, old.type, 1 + len(left[0]), count=len(left), raw=old.raw)
    caps.value = left if len(left) > 1 else left[0]


def _drop_from_json(obj: JsonObject, left: list[str]) -> None:
    subs = obj.get("subsections")
    if not isinstance(subs, list):
        return
    for s in list(subs):
        if not (isinstance(s, JsonObject) and s.get("vmsd_name") == CAPS):
            continue
        if not left:
            subs.remove(s)
            continue
        for f in s.get("fields", []):
            if isinstance(f, JsonObject) and f.get("name") == "capabilities":
                # QEMU writes array_len only for more than one element, and the
                # size of the first one.
                if len(left) > 1:
                    _set_before(f, "array_len", len(left), "type")
                else:
                    f.remove("array_len")
                f.set("size", 1 + len(left[0]))
    if not subs:
        obj.remove("subsections")


def _set_before(obj: JsonObject, key: str, value: Any, before: str) -> None:
    """Set ``key``, inserting it before ``before`` when it is new (QEMU's key order)."""
    if key in obj:
        obj.set(key, value)
        return
    keys = [k for k, _ in obj.pairs]
    at = keys.index(before) if before in keys else len(keys)
    obj.pairs.insert(at, (key, value))
    dict.__setitem__(obj, key, value)


class ConvertWriter(StreamWriter):
    """Writes ``mig`` as a plain single-pass stream (see the module docstring)."""

    def __init__(self, mig: Migration) -> None:
        super().__init__(mig)
        entries = [e for e in mig.entries.values() if e.idstr == "ram" and e.handler is not None]
        if len(entries) > 1:
            raise UsageError("the stream has several RAM sections; cannot merge them")
        self.ram_entry: SectionEntry | None = entries[0] if entries else None
        if self.ram_entry is not None:
            self.index = mig.page_index
            missing = mig.missing_pages()
            if missing:
                what = ", ".join(f"{n} pages of {b}" for b, n in missing.items())
                raise UsageError(
                    f"the stream lacks RAM pages ({what}): a multifd migration needs its "
                    "channels (--channel FILE for each)"
                )
        self.dropped = drop_capabilities(mig)

    def keeps_container(self) -> bool:
        return False

    def write_record(self, w: Writer, rec: Record) -> None:
        if isinstance(rec, SectionRecord) and rec.entry is self.ram_entry:
            if rec is self.ram_entry.records[0]:  # type: ignore[union-attr]
                self.write_ram(w, rec)
            return
        if isinstance(rec, CommandRecord):
            if rec.cmd == MIG_CMD_PACKAGED and rec.nested is not None:
                self.write_records(w, rec.nested)
            elif rec.cmd not in DROPPED_COMMANDS:
                super().write_record(w, rec)
            return
        super().write_record(w, rec)

    # -- RAM -----------------------------------------------------------------------
    def _section_head(self, w: Writer, kind: int, rec: SectionRecord) -> None:
        entry = rec.entry
        assert entry is not None
        w.u8(kind)
        w.u32(entry.section_id)
        if kind == SECTION_START:
            w.counted_str(entry.idstr)
            w.u32(entry.instance_id)
            w.u32(rec.version if rec.version is not None else entry.version)

    def _section_foot(self, w: Writer, rec: SectionRecord) -> None:
        if rec.footer:
            w.u8(SECTION_FOOTER)
            w.u32(rec.entry.section_id)  # type: ignore[union-attr]

    def write_ram(self, w: Writer, start: SectionRecord) -> None:
        """START (block list), PART (every page), END: one pass of RAM."""
        ram = self.mig.ram
        assert ram is not None
        blocks = list(ram.blocks.values())
        self._section_head(w, SECTION_START, start)
        write_record_head(w, RAM_SAVE_FLAG_MEM_SIZE, sum(b.used_length for b in blocks), None)
        for b in blocks:
            plain = RamBlock(b.name, b.used_length, mr_addr=b.mr_addr)
            write_mem_size_entry(w, plain)
        w.u64(RAM_SAVE_FLAG_EOS)
        self._section_foot(w, start)
        self._section_head(w, SECTION_PART, start)
        for b in blocks:
            if b.in_stream:
                self._pages(w, b)
        w.u64(RAM_SAVE_FLAG_EOS)
        self._section_foot(w, start)
        self._section_head(w, SECTION_END, start)
        w.u64(RAM_SAVE_FLAG_EOS)
        self._section_foot(w, start)

    def _pages(self, w: Writer, block: RamBlock) -> None:
        index = self.index
        ps = index.page_size
        cont = False
        copied = 0
        for run in index.runs(block.name):
            if run.kind == ABSENT_RUN:
                continue  # no record gave these pages: nothing to write
            if run.kind == ZERO_RUN:
                write_zero_run(w, block, run.first * ps, run.count, ps, cont)
            elif run.kind == DATA_RUN:
                src = index.inputs[run.input]
                for i in range(run.count):
                    data = src.read_at(run.offset + i * run.stride, ps)
                    write_page(w, block, (run.first + i) * ps, data, cont)
                    cont = True
                    copied += ps
                    if copied >= RELEASE_STEP:
                        # Pages come in index order, not input order: let all of it go.
                        for inp in index.inputs:
                            inp.release(0, inp.size or 0)
                        copied = 0
            else:  # zlib, XBZRLE results, filled pages: their content as computed
                for page in range(run.first, run.first + run.count):
                    write_page(w, block, page * ps, index.read_page(block.name, page), cont)
                    cont = True
            cont = True
