"""``qevm tap`` without QEMU: recorded migrations replayed through it on loopback.

A fake source opens the connections of a committed live capture
(tests/data/live: the main stream, multifd or postcopy-preempt channels) and
sends their recorded bytes; a fake destination reads everything and answers
with the recorded return path.  The truth is the capture's own recipe: what
the source QEMU's ``query-migrate`` said (pages, postcopy requests) and the
bytes themselves (forwarded and recorded byte for byte).
"""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import threading
import time

import pytest
from conftest import DATA, unpack

from qevm.tap.proxy import Tap

LIVE = DATA / "live"
CAPTURES = ["multifd-72", "multifd-zlib-72", "multifd-zstd-72", "postcopy-preempt-72"]


class FakeDestination:
    """Accepts connections, reads each to its end, answers the first with ``reply``."""

    def __init__(self, reply: bytes = b"") -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.reply = reply
        self.received: list[bytes] = []
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            i = len(self.received)
            self.received.append(b"")
            t = threading.Thread(target=self._read, args=(conn, i), daemon=True)
            self._threads.append(t)
            t.start()

    def _read(self, conn: socket.socket, i: int) -> None:
        chunks = []
        if i == 0 and self.reply:
            conn.sendall(self.reply)
        while data := conn.recv(1 << 20):
            chunks.append(data)
        self.received[i] = b"".join(chunks)
        conn.close()

    def close(self) -> None:
        self.listener.close()
        for t in self._threads:
            t.join(10)


def _replay(
    tmp_path,
    streams: list[bytes],
    reply: bytes = b"",
    delay: float = 0.0,
    statuses: list[int] | None = None,
):
    """Send ``streams`` (one connection each, opened in this order) through a tap
    (what its ``serve`` returned appended to ``statuses``)."""
    dest = FakeDestination(reply)
    events: list[dict] = []
    tap = Tap(("127.0.0.1", 0), ("127.0.0.1", dest.port), tmp_path / "rec", on_event=events.append)
    done = statuses if statuses is not None else []
    server = threading.Thread(target=lambda: done.append(tap.serve()), daemon=True)
    server.start()
    socks = []
    for _ in streams:
        s = socket.create_connection(tap.address)
        socks.append(s)
        if delay:
            time.sleep(delay)
    senders = []
    for s, data in zip(socks, streams):

        def send(s: socket.socket = s, data: bytes = data) -> None:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while s.recv(1 << 16):  # the return path, until the destination closes
                pass
            s.close()

        t = threading.Thread(target=send, daemon=True)
        senders.append(t)
        t.start()
    for t in senders:
        t.join(60)
    server.join(60)
    dest.close()
    assert not server.is_alive()
    return dest, events, tap.summaries[-1]


@pytest.mark.parametrize("name", CAPTURES)
def test_replayed_capture_is_forwarded_recorded_and_counted(name, tmp_path):
    recipe = json.loads((LIVE / f"{name}.json").read_text())
    main = unpack(LIVE / f"{name}.mig.xz").read_bytes()
    channels = [
        unpack(LIVE / f"{name}.ch{i}.bin.xz").read_bytes()
        for i in range(1, len(recipe["channels"]))
    ]
    rp_path = LIVE / f"{name}.rp.bin.xz"
    reply = unpack(rp_path).read_bytes() if rp_path.exists() else b""
    dest, events, summary = _replay(tmp_path, [main, *channels], reply)

    # byte for byte, main stream first, the rest in the order they were opened
    assert dest.received == [main, *channels]
    rec = tmp_path / "rec"
    assert (rec / "main.mig").read_bytes() == main
    for i, data in enumerate(channels, 1):
        assert (rec / f"channel-{i}.bin").read_bytes() == data
    if reply:
        assert (rec / "return-path.bin").read_bytes() == reply

    # counted as the source QEMU counted
    ram = recipe["source_query_migrate"]["ram"]
    assert summary["status"] == "completed", summary.get("failure")
    assert summary["pages"]["normal"] == ram["normal"]
    assert summary["pages"]["zero"] == ram["duplicate"]
    assert 1 <= summary["passes"] <= ram["dirty-sync-count"]
    assert summary["bytes"] == len(main) + sum(map(len, channels))
    if reply:
        rp = summary["return_path"]
        requests = rp["messages"].get("REQ_PAGES", 0) + rp["messages"].get("REQ_PAGES_ID", 0)
        assert requests == ram["postcopy-requests"]
        assert rp["shut"] == 0
    if "multifd" in recipe["dest_capabilities"]:
        truth = recipe["truth"]["multifd"]
        got = {str(c["channel_id"]): c["packets"] for c in summary["channels"].values()}
        assert got == {k: v["packets"] for k, v in truth.items()}
    session = json.loads((rec / "session.json").read_text())
    roles = [c["role"] for c in session["connections"]]
    assert roles[0] == "main" and len(roles) == 1 + len(channels)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "listening" and kinds[-1] == "summary"
    assert "switchover" in kinds or "postcopy" in kinds


def test_forwarding_and_recording_by_copying(tmp_path, monkeypatch):
    """Without splice (read, send, record behind): the same bytes, the same counts."""
    import qevm.tap.pump as pump

    monkeypatch.setattr(pump, "tee_available", lambda: False)
    main = unpack(LIVE / "multifd-zstd-72.mig.xz").read_bytes()
    chans = [unpack(LIVE / f"multifd-zstd-72.ch{i}.bin.xz").read_bytes() for i in (1, 2)]
    dest, _events, summary = _replay(tmp_path, [main, *chans])
    assert dest.received == [main, *chans]
    session = json.loads((tmp_path / "rec" / "session.json").read_text())
    assert not any(c["s2d"]["zero_copy"] for c in session["connections"])
    assert (tmp_path / "rec" / "channel-2.bin").read_bytes() == chans[1]
    assert summary["status"] == "completed"
    ram = json.loads((LIVE / "multifd-zstd-72.json").read_text())["source_query_migrate"]["ram"]
    assert summary["pages"]["normal"] == ram["normal"]


def test_main_stream_reaches_the_destination_first(tmp_path):
    """QEMU before 8.0 takes the first connection as the main stream."""
    main = unpack(LIVE / "multifd-72.mig.xz").read_bytes()
    chan = unpack(LIVE / "multifd-72.ch1.bin.xz").read_bytes()
    # the channel is opened first and says what it is at once; the main stream later
    dest = FakeDestination()
    events: list[dict] = []
    tap = Tap(("127.0.0.1", 0), ("127.0.0.1", dest.port), tmp_path / "rec", on_event=events.append)
    server = threading.Thread(target=tap.serve, daemon=True)
    server.start()
    first = socket.create_connection(tap.address)
    first.sendall(chan[:64])  # MultiFDInit_t
    empty = socket.create_connection(tap.address)
    empty.close()  # a connection that closes without sending anything
    time.sleep(0.3)
    second = socket.create_connection(tap.address)
    second.sendall(main)
    second.shutdown(socket.SHUT_WR)
    first.sendall(chan[64:])
    first.shutdown(socket.SHUT_WR)
    for s in (first, second):
        while s.recv(1 << 16):
            pass
        s.close()
    server.join(60)
    dest.close()
    assert dest.received == [main, chan]
    session = json.loads((tmp_path / "rec" / "session.json").read_text())
    by_index = {c["index"]: c for c in session["connections"]}
    assert by_index[0]["role"] == "multifd" and by_index[0]["s2d"]["file"] == "channel-1.bin"
    assert by_index[1]["outcome"] == "closed-empty" and "s2d" not in by_index[1]
    assert by_index[2]["role"] == "main"
    assert by_index[2]["times"]["connected"] < by_index[0]["times"]["connected"]


def test_destination_reset_is_reported_where_the_source_was(tmp_path):
    """A destination that hangs up early: the source is reset too, the tap says where."""
    main = unpack(LIVE / "multifd-72.mig.xz").read_bytes()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def hang_up() -> None:
        conn, _ = listener.accept()
        conn.recv(100)  # the header and a little more, then a reset with data unread
        time.sleep(0.02)
        conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    events: list[dict] = []
    port = listener.getsockname()[1]
    tap = Tap(("127.0.0.1", 0), ("127.0.0.1", port), tmp_path / "rec", on_event=events.append)
    server = threading.Thread(target=tap.serve, daemon=True)
    server.start()
    src = socket.create_connection(tap.address)
    src.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
    reset = False
    try:
        for i in range(0, len(main), 4096):
            src.sendall(main[i : i + 4096])
            time.sleep(0.002)
        src.shutdown(socket.SHUT_WR)
        while src.recv(1 << 16):
            pass
    except OSError:
        reset = True  # as from the destination itself
    src.close()
    assert reset
    server.join(60)
    listener.close()
    summary = tap.summaries[-1]
    assert summary["status"] == "failed"
    fail = summary["failure"]
    assert any("main.mig: the destination" in w for w in fail["reasons"]), fail
    sent = fail["source_had_sent"]
    assert 0 < sent["offset"] < len(main)
    assert sent["record"].startswith("section 'ram'")  # RAM was on its way
    assert "into_body" in sent
    assert (tmp_path / "rec" / "main.mig").read_bytes() == main[: summary["bytes"]]


def _multifd_72() -> tuple[bytes, list[bytes], dict]:
    recipe = json.loads((LIVE / "multifd-72.json").read_text())
    main = unpack(LIVE / "multifd-72.mig.xz").read_bytes()
    chans = [unpack(LIVE / f"multifd-72.ch{i}.bin.xz").read_bytes() for i in (1, 2)]
    return main, chans, recipe


def test_recording_that_fails_leaves_the_migration_alone_and_says_so(tmp_path, monkeypatch):
    """A disk that fills up: everything is still forwarded, the migration completes,
    and the summary says which recordings stopped where; the tap exits 1 (its counts
    cover only what was recorded), not 0."""
    from qevm.tap import record

    advance = record.Recorder._advance

    def disk_full(self, n):
        advance(self, n)
        if self.recorded >= 200_000 and self.error is None:
            self.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(record.Recorder, "_advance", disk_full)
    monkeypatch.setattr(record, "READ", 4096)  # the disk fills in the middle of a stream
    main, chans, recipe = _multifd_72()
    statuses: list[int] = []
    dest, _events, summary = _replay(tmp_path, [main, *chans], statuses=statuses)
    assert dest.received == [main, *chans]
    assert summary["status"] == "completed", summary.get("failure")
    assert statuses == [1]
    stopped = [w for w in summary["incomplete"] if "recording stopped after" in w]
    assert stopped and stopped[0].startswith("main.mig: ") and "No space left" in stopped[0]
    assert (tmp_path / "rec" / "main.mig").stat().st_size < len(main)
    ram = recipe["source_query_migrate"]["ram"]
    assert summary["pages"]["normal"] < ram["normal"]


def test_multifd_page_outside_its_block_is_an_error_not_a_count(tmp_path):
    """The tap checks a channel's packets as ``qevm extract`` does: a page offset past
    its block stops that channel's decoding with the error, and the tap exits 1."""
    from qevm.sections.ram.multifd import MultiFDPacket, read_handshake, read_packets
    from qevm.source.base import StreamSource
    from qevm.wire import Reader

    main, chans, _recipe = _multifd_72()
    r = Reader(StreamSource(io.BytesIO(chans[0]), "channel"))
    read_handshake(r)
    pkt = next(p for p in read_packets(r, 4096) if p.header.normal_pages)
    at = pkt.header.at + MultiFDPacket.size  # the first of its page offsets
    bad = bytearray(chans[0])
    bad[at : at + 8] = (1 << 40).to_bytes(8, "big")
    r = Reader(StreamSource(io.BytesIO(bytes(bad)), "channel"))
    read_handshake(r)
    assert next(p for p in read_packets(r, 4096) if p.header.normal_pages).offsets[0] == 1 << 40
    statuses: list[int] = []
    dest, _events, summary = _replay(tmp_path, [main, bytes(bad), chans[1]], statuses=statuses)
    assert dest.received == [main, bytes(bad), chans[1]]
    assert statuses == [1]
    [why] = [w for w in summary["incomplete"] if w.startswith("channel-1.bin: ")]
    assert "0x10000000000 is outside block 'pc.ram'" in why, why


def test_passes_wait_for_a_connection_the_tap_has_not_opened_yet():
    """Until the tap says what an accepted connection is, it may be a multifd channel
    with pages of any sync interval: no interval is closed before."""
    from collections import Counter

    from qevm.tap.decoder import Decoder
    from qevm.tap.passes import Item

    d = Decoder("/nonexistent", io.StringIO())
    d.pending(1)
    d.main_epoch([Item(0, 10, Counter(normal=11), 11 * 4104, "main.mig")], 0, 1)
    assert d.passes.count == 0
    d.settled(1)
    assert d.passes.count == 1


def test_destination_that_closes_without_shut_failed(tmp_path):
    """With a return path, a destination that loaded everything says SHUT 0; QEMU 7.2
    says nothing when it fails and exits, which can look as clean as a success when it
    had read the whole stream: the tap, like the source, takes the missing SHUT for a
    failure."""
    main = unpack(LIVE / "postcopy-preempt-72.mig.xz").read_bytes()
    chan = unpack(LIVE / "postcopy-preempt-72.ch1.bin.xz").read_bytes()
    reply = unpack(LIVE / "postcopy-preempt-72.rp.bin.xz").read_bytes()
    shut0 = bytes.fromhex("0001000400000000")  # MIG_RP_MSG_SHUT, 4 bytes, 0
    assert reply.endswith(shut0)
    statuses: list[int] = []
    _dest, _events, summary = _replay(tmp_path, [main, chan], reply[: -len(shut0)], 0, statuses)
    assert summary["status"] == "failed" and statuses == [1]
    assert any("without the SHUT" in why for why in summary["failure"]["reasons"]), summary
