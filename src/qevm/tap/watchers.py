"""Following each recorded connection with qevm's own readers, as it grows.

* :class:`MainWatcher` runs the stream framing (:func:`qevm.loadvm.parse_stream`)
  over the main stream, announcing records as they are read and counting
  pages with :class:`~qevm.tap.counting.MainCounter`;
* :class:`ChannelWatcher` reads a multifd channel packet by packet
  (:func:`~qevm.sections.ram.multifd.read_packets`) or the postcopy-preempt
  channel's bare RAM records, against the main stream's RAM blocks;
* :class:`ReturnPathWatcher` reads the destination's messages.

Each runs on its own thread of the decoder process and reports to the
:class:`~qevm.tap.decoder.Decoder` (events, the pass counter).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

from ..errors import QevmError
from ..format import (
    MIG_CMD_OPEN_RETURN_PATH,
    MIG_CMD_PACKAGED,
    MIG_CMD_PING,
    MIG_CMD_POSTCOPY_LISTEN,
    MIG_CMD_POSTCOPY_RUN,
    MIG_CMD_SWITCHOVER_START,
    MULTIFD_FLAG_SYNC,
    SECTION_END,
    SECTION_FULL,
    SECTION_START,
    MultiFDPacketDeviceState,
)
from ..loadvm import parse_stream
from ..sections.ram.blocks import RamBlock
from ..sections.ram.consumer import PageConsumer
from ..sections.ram.multifd import (
    apply_channel,
    checked_pages,
    packet_page_size,
    read_handshake,
    read_packets,
)
from ..sections.ram.records import RamState
from ..stream import (
    CommandRecord,
    ConfigurationRecord,
    DescriptionRecord,
    EofRecord,
    HeaderRecord,
    ParseOptions,
    Record,
    SectionRecord,
    TrailingRecord,
)
from ..wire import Reader
from .counting import MainCounter, PlainCounter
from .follow import FollowSource
from .passes import Item, position
from .returnpath import SHUT, ReturnPathReader

if TYPE_CHECKING:
    from .decoder import Decoder


def error_json(e: QevmError, where: str) -> dict[str, Any]:
    """A decoding error as an event's fields."""
    out: dict[str, Any] = {"file": where, "message": e.message}
    for k in ("offset", "section", "field", "expected"):
        v = getattr(e, k)
        if v is not None:
            out[k] = v
    out["text"] = str(e)
    return out


class Watcher:
    """Follows one recording on a thread."""

    def __init__(self, decoder: Decoder, name: str, source: FollowSource) -> None:
        self.decoder = decoder
        self.name = name
        self.source = source
        self.error: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._run, name=f"tap-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def emit(self, event: str, /, **fields: Any) -> None:
        """An event about this recording."""
        self.decoder.event(event, file=self.name, **fields)

    def _run(self) -> None:
        try:
            self.follow()
        except QevmError as e:
            self.error = error_json(e, self.name)
            self.decoder.event("error", **self.error)
        except Exception as e:  # a bug: report it, keep the tap going
            self.error = {"file": self.name, "message": f"internal error: {e!r}"}
            self.decoder.event("error", **self.error)
        finally:
            self.done()

    def follow(self) -> None:
        raise NotImplementedError

    def done(self) -> None:
        """Called when the thread ends, however it ends."""


class MainWatcher(Watcher):
    """The main stream: records, commands, RAM pages, the switchover."""

    def __init__(self, decoder: Decoder, name: str, source: FollowSource) -> None:
        super().__init__(decoder, name, source)
        self.counter: MainCounter | None = None
        self.ram: RamState | None = None
        self.ctx: Any = None
        self.ram_ready = threading.Event()
        self.records: list[list[Any]] = []
        self.eof = False
        self.switchover: int | None = None
        self.postcopy: int | None = None
        self.sections = 0
        #: PING values and where they are (the destination answers each when it reads it).
        self.pings: dict[int, int] = {}
        #: Where the source asked the destination to open its return path.
        self.return_path: int | None = None

    def _consumer(self, ctx: Any, page_size: int) -> PageConsumer:
        self.ctx = ctx
        self.counter = MainCounter(
            page_size, self.name, lambda: ctx.r.offset, self.decoder.main_epoch
        )
        return self.counter

    def follow(self) -> None:
        opts = ParseOptions(
            ram_consumer=self._consumer, on_record=self._record, decode_devices=False
        )
        parse_stream(self.source, opts)

    def done(self) -> None:
        if self.counter is not None:
            self.counter.finish()
        self.ram_ready.set()
        self.decoder.main_finished()

    def position(self) -> int:
        ctx = self.ram.ctx if self.ram is not None else self.ctx
        return ctx.r.offset if ctx is not None else 0

    # -- records -----------------------------------------------------------------
    def _record(self, rec: Record) -> None:
        if isinstance(rec, SectionRecord):
            self._section(rec)
        elif isinstance(rec, CommandRecord):
            self._command(rec)
        elif isinstance(rec, ConfigurationRecord) and rec.config is not None:
            conf = rec.config
            self.emit(
                "configuration",
                offset=rec.offset,
                machine=conf.machine,
                page_size=conf.page_size,
                capabilities=conf.capabilities,
            )
        elif isinstance(rec, HeaderRecord):
            self.emit("header", offset=rec.offset)
        elif isinstance(rec, EofRecord):
            self.eof = True
            self._keep(rec, "EOF")
            self.emit("eof", offset=rec.offset)
        elif isinstance(rec, DescriptionRecord):
            self._keep(rec, "description")
            self.emit("description", offset=rec.offset, length=rec.length)
        elif isinstance(rec, TrailingRecord):
            self._keep(rec, "trailing bytes")

    def _keep(self, rec: Record, label: str, **extra: Any) -> None:
        self.records.append([rec.offset, rec.end, label, extra or None])

    def _section(self, rec: SectionRecord) -> None:
        entry = rec.entry
        assert entry is not None
        self.sections += 1
        live = entry.handler is not None and entry.handler.reads(rec.type)
        self._keep(
            rec,
            f"section {entry.label!r}",
            id=entry.section_id,
            type=rec.type_name,
            body=rec.body_offset,
        )
        if entry.idstr == "ram" and rec.type == SECTION_START:
            self.ram = entry.state
            blocks = [{"name": b.name, "size": b.used_length} for b in entry.state.blocks.values()]
            self.emit("ram", offset=rec.offset, blocks=blocks)
            self.ram_ready.set()
        if rec.type == SECTION_END and self.switchover is None and self.postcopy is None:
            self._switchover(rec.offset, f"END of section {entry.label!r}")
        if live and rec.type not in (SECTION_START, SECTION_END):
            return  # PART records of RAM and other live sections: counted, not listed
        if rec.type == SECTION_FULL and self.switchover is None and self.postcopy is None:
            self._switchover(rec.offset, f"device state ({entry.label!r})")
        self.emit(
            "section",
            offset=rec.offset,
            name=entry.idstr,
            instance=entry.instance_id,
            id=entry.section_id,
            version=entry.version,
            type=rec.type_name,
            size=rec.end - rec.offset,
        )

    def _switchover(self, offset: int, how: str) -> None:
        self.switchover = offset
        self.emit("switchover", offset=offset, how=how)

    def _command(self, rec: CommandRecord) -> None:
        info = {k: v for k, v in rec.info.items() if k != "ranges"}
        if "ranges" in rec.info:
            info["ranges"] = len(rec.info["ranges"])
        self._keep(rec, f"command {rec.name}")
        if rec.cmd == MIG_CMD_PING:
            self.pings.setdefault(rec.info["value"], rec.end)
        if rec.cmd == MIG_CMD_OPEN_RETURN_PATH and self.return_path is None:
            self.return_path = rec.offset
        if rec.cmd == MIG_CMD_SWITCHOVER_START and self.switchover is None:
            self._switchover(rec.offset, "SWITCHOVER_START")
        postcopy = (MIG_CMD_POSTCOPY_LISTEN, MIG_CMD_POSTCOPY_RUN, MIG_CMD_PACKAGED)
        if rec.cmd in postcopy and self.postcopy is None:
            self.postcopy = rec.offset
            if self.counter is not None:
                self.counter.enter_postcopy()
            self.emit("postcopy", offset=rec.offset)
        self.emit("command", offset=rec.offset, command=rec.name, **info)


def channel_state(main: MainWatcher, consumer: PageConsumer) -> RamState:
    """A RAM state of its own for an extra connection, with the main stream's blocks."""
    ram = main.ram
    assert ram is not None
    st = RamState(ram.ctx)
    st.page_size = ram.page_size
    st.blocks = {
        n: RamBlock(n, b.used_length, page_size=b.page_size, mr_addr=b.mr_addr)
        for n, b in ram.blocks.items()
    }
    st.consumer = consumer
    return st


class ChannelWatcher(Watcher):
    """A multifd channel or the postcopy-preempt channel."""

    def __init__(self, decoder: Decoder, name: str, source: FollowSource, kind: str) -> None:
        super().__init__(decoder, name, source)
        self.kind = kind
        self.info: dict[str, Any] = {"kind": kind, "packets": 0, "syncs": 0}
        self.counts = PlainCounter(4096)
        self.bytes = 0
        self._order: dict[str, int] = {}

    def follow(self) -> None:
        main = self.decoder.main
        if main is None:
            return
        main.ram_ready.wait()
        if main.ram is None:
            return  # the main stream ended (or failed) before its RAM blocks
        self._order = {n: i for i, n in enumerate(main.ram.blocks)}
        if self.kind == "multifd":
            self._multifd(main)
        else:
            self._preempt(main)

    def done(self) -> None:
        if self.kind == "multifd":
            self.decoder.channel_finished(self.name)

    def _preempt(self, main: MainWatcher) -> None:
        assert main.ram is not None
        if main.ram.page_size is None:
            main.thread.join()  # postcopy pages are announced on the main stream first
        if main.ram.page_size is None:
            return
        self.counts = PlainCounter(main.ram.page_size)
        st = channel_state(main, self.counts)
        apply_channel(st, self.source, 1, kind="postcopy-preempt")
        self.bytes = self.source.position

    def _multifd(self, main: MainWatcher) -> None:
        """Packets as they come: pages counted (once per round), payloads skipped."""
        assert main.ram is not None
        blocks = main.ram.blocks
        r = Reader(self.source)
        init = read_handshake(r)
        self.info.update(channel_id=init.id, uuid=init.uuid.hex())
        self.emit("channel", offset=init.at, kind="multifd", channel_id=init.id)
        if r.at_end():
            return
        d = self.decoder
        n = self.counts.counts.n
        epoch = 0
        ps = main.ram.page_size or packet_page_size(r)
        for pkt in read_packets(r, ps):
            r.skip(pkt.payload_length)
            self.bytes = r.offset
            self.info["packets"] += 1
            hdr = pkt.header
            if isinstance(hdr, MultiFDPacketDeviceState):
                self.info.setdefault("device_state", []).append(
                    {"idstr": hdr.device_name, "instance_id": hdr.instance_id}
                )
                continue
            if hdr.normal_pages or hdr.zero_pages:
                self._pages(d, pkt, blocks, ps, epoch, n)
            if hdr.flags & MULTIFD_FLAG_SYNC:
                self.info["syncs"] += 1
                epoch += 1
                d.channel_epoch(self.name, epoch)

    def _pages(self, d: Decoder, pkt: Any, blocks: Any, ps: int, epoch: int, n: list) -> None:
        block, self.info["compression"] = checked_pages(pkt, blocks, ps)
        hdr = pkt.header
        normal, zero = hdr.normal_pages, hdr.zero_pages
        addrs = pkt.offsets[: normal + zero]
        fresh = d.fresh(epoch, block.name, block.used_length, ps, addrs)
        new_normal = sum(fresh[:normal])
        new_zero = sum(fresh[normal:])
        if new_normal + new_zero < normal + zero:
            self.info["resent"] = self.info.get("resent", 0) + normal + zero - new_normal - new_zero
        n[0] += new_normal
        n[1] += new_zero
        base = position(self._order[block.name], 0)
        keys = [base | a for a, new in zip(addrs, fresh) if new]
        pages = +Counter({"normal": new_normal, "zero": new_zero})
        first, last = (min(keys), max(keys)) if keys else (None, None)
        size = pkt.payload_offset + pkt.payload_length - hdr.at
        d.channel_item(self.name, epoch, Item(first, last, pages, size, self.name))


class ReturnPathWatcher(Watcher):
    """The destination's messages on the main connection."""

    def __init__(self, decoder: Decoder, name: str, source: FollowSource) -> None:
        super().__init__(decoder, name, source)
        self.messages: Counter = Counter()
        self.shut: int | None = None
        self.last: list[dict[str, Any]] = []
        self.requested_bytes = 0
        self.last_pong: int | None = None

    def follow(self) -> None:
        for msg in ReturnPathReader(self.source.read_some).messages():
            self.messages[msg.name] += 1
            js = msg.to_json()
            self.last = (self.last + [js])[-8:]
            if msg.type == SHUT:
                self.shut = msg.info["value"]
            elif msg.name == "PONG":
                self.last_pong = msg.info["value"]
            elif "length" in msg.info:
                self.requested_bytes += msg.info["length"]
            self.emit("return-path", **js)
