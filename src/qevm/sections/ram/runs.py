"""Runs of CONTINUE records: the bulk of every RAM section, read without a call per record.

After a ZERO or PAGE record, QEMU sends the block's next pages as
``ZERO|CONTINUE`` (fill 0) and ``PAGE|CONTINUE`` records until the block or
the iteration changes.  :class:`ContinueRuns` reads them in a tight loop,
and, once numpy is loaded, long runs of one kind up to 64 Ki records at a time.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from ...errors import TruncatedError
from ...format import RAM_SAVE_FLAG_CONTINUE, RAM_SAVE_FLAG_PAGE, RAM_SAVE_FLAG_ZERO
from .consumer import PageConsumer

if TYPE_CHECKING:
    from ...wire import Reader
    from .blocks import RamBlock
    from .records import RamState

#: Most bytes of records one vectorised step looks at.
MAX_RUN_BYTES = 16 << 20
_U64 = struct.Struct(">Q")


class ContinueRuns:
    """Reads the CONTINUE records after a page record (numpy for long runs once loaded)."""

    def __init__(self) -> None:
        #: numpy, once the stream has shown it is big enough to repay importing it.
        self.numpy: Any = None
        self._hint = 64

    def read(self, r: Reader, block: RamBlock, state: RamState) -> tuple[int, int]:
        """Consume the ZERO|CONTINUE (fill 0) and PAGE|CONTINUE records that follow;
        their pages go to ``state``'s consumer.

        These make up nearly all of a RAM section; this loop reads them with
        no method calls per record (and numpy, once loaded, reads long runs
        of one kind at once).  Returns (zero pages, data pages).
        """
        nz = npg = 0
        while True:
            if self.numpy is not None:
                while True:
                    k1 = self._run(r, block, state, 9, RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE)
                    page = 8 + state.page_size  # type: ignore[operator]
                    k2 = self._run(
                        r, block, state, page, RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE
                    )
                    nz += k1
                    npg += k2
                    if not (k1 or k2):
                        break
            a, b, more = self._read_py(r, block, state)
            nz += a
            npg += b
            if not more:
                return nz, npg
            # A run longer than one step (a whole RAM in one record): let go of
            # what was read, and go on with numpy once it pays.
            r.release_behind()
            state.vectorise_if_due(nz + npg)

    def _read_py(self, r: Reader, block: RamBlock, state: RamState) -> tuple[int, int, bool]:
        """Records of the run in at most ``MAX_RUN_BYTES``; whether the run may go on."""
        buf, pos, base = r.buf, r.pos, r.base
        avail_end = pos + r.available()
        end = min(avail_end, pos + MAX_RUN_BYTES)
        ps = state.page_size
        assert ps is not None
        mask = ps - 1
        rec_page = 8 + ps
        used = block.used_length
        consumer = state.consumer
        keep = type(consumer) is not PageConsumer
        zero, page = consumer.zero, consumer.page
        src = state.src
        unpack = _U64.unpack_from
        zc = RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE
        pc = RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE
        nz = npg = 0
        while pos + 9 <= end:
            v = unpack(buf, pos)[0]
            fl = v & mask
            a = v - fl
            if fl == zc:
                if buf[pos + 8] or a >= used:
                    break
                if keep:
                    zero(block, a, 0)
                pos += 9
                nz += 1
            elif fl == pc:
                if pos + rec_page > end or a >= used:
                    break
                if keep:
                    r.pos = pos + 8
                    page(block, a, base + pos + 8, r, src)
                pos += rec_page
                npg += 1
            else:
                break
        r.pos = pos
        return nz, npg, end < avail_end and end - pos < 9 + rec_page

    def _run(self, r: Reader, block: RamBlock, state: RamState, size: int, want: int) -> int:
        np = self.numpy
        total = 0
        ps = state.page_size
        assert ps is not None
        mask = np.uint64(ps - 1)
        used = np.uint64(block.used_length)
        while True:
            r.release_behind()
            n = min(self._hint, r.available() // size, MAX_RUN_BYTES // size)
            if n < 8:
                try:
                    r.ensure(size * 64)
                except TruncatedError:
                    pass
                n = min(self._hint, r.available() // size, MAX_RUN_BYTES // size)
                if n < 2:
                    return total
            hdr = np.ndarray((n,), ">u8", r.buf, r.pos, (size,)).astype(np.uint64)
            ok = (hdr & mask) == np.uint64(want)
            if want & RAM_SAVE_FLAG_ZERO:
                ok &= np.ndarray((n,), np.uint8, r.buf, r.pos + 8, (size,)) == 0
            addrs = hdr & ~mask
            ok &= addrs < used
            k = n if ok.all() else int(np.argmin(ok))
            if k == 0:
                return total
            addrs = addrs[:k]
            if want & RAM_SAVE_FLAG_ZERO:
                state.consumer.zero_run(block, addrs)
            else:
                start = r.base + r.pos + 8
                offs = np.arange(k, dtype=np.uint64) * np.uint64(size) + np.uint64(start)
                state.consumer.page_run(block, addrs, offs, r, state.src)
            r.pos += k * size
            total += k
            if k < n:
                self._hint = max(64, self._hint // 2)
                return total
            self._hint = min(self._hint * 2, 1 << 16)
