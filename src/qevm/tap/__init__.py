"""``qevm tap``: a recording, decoding proxy between two QEMUs migrating live.

The source migrates to the tap (``migrate tcp:TAP``), the tap forwards every
connection to the destination (``-incoming tcp:DEST``) byte for byte, records
each direction of each connection (``main.mig``, ``return-path.bin``,
``channel-1.bin``, ...) and decodes the recordings as they grow with qevm's
own readers, in a process of its own, so the migration is never slowed by
the decoding.

Layout: :mod:`.roles` (what a connection is, from its first bytes),
:mod:`.pump` (forwarding one direction: splice/tee, recording written
behind), :mod:`.connection`, :mod:`.session` (one migration: admission,
decoder process, timeline), :mod:`.proxy` (:class:`Tap`, the listener),
:mod:`.decoder` with :mod:`.watchers`, :mod:`.counting`, :mod:`.passes` and
:mod:`.returnpath` (the decoding process), :mod:`.follow` (reading a file
that is still being written), :mod:`.report` (the summary, where a failed
migration stopped) and :mod:`.view` (JSON lines, text, live view).

>>> from qevm.tap.proxy import Tap
>>> tap = Tap(("127.0.0.1", 4444), ("127.0.0.1", 5555), record="rec", on_event=print)
>>> status = tap.serve()          # one migration; 0 when it completed
"""

from .proxy import Tap, parse_address

__all__ = ["Tap", "parse_address"]
