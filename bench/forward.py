"""A bare TCP forwarder: what any proxy between two QEMUs costs, with nothing else.

``python bench/forward.py LISTEN_PORT DEST_PORT`` (127.0.0.1) accepts
connections and forwards each both ways to a connection of its own to the
destination, opened in the order they were accepted, with ``splice``
through a pipe (the bytes never enter the process), until every connection
has closed.  No recording, no decoding, no classifying: ``bench/tap.py``
runs it beside ``qevm tap`` to tell the cost of the extra TCP hop from the
cost of what the tap does with the bytes.  Prints ``ready`` once listening.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

CHUNK = 1 << 20


def pump(src: socket.socket, dst: socket.socket) -> None:
    r, w = os.pipe()
    try:
        while n := os.splice(src.fileno(), w, CHUNK):
            while n:
                n -= os.splice(r, dst.fileno(), n)
    except OSError:
        pass
    finally:
        os.close(r)
        os.close(w)
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main() -> None:
    port, dport = int(sys.argv[1]), int(sys.argv[2])
    ls = socket.create_server(("127.0.0.1", port))
    print("ready", flush=True)
    threads: list[threading.Thread] = []
    ls.settimeout(30)  # the first connection
    while True:
        try:
            c, _ = ls.accept()
        except TimeoutError:
            break
        d = socket.create_connection(("127.0.0.1", dport))
        for a, b in ((c, d), (d, c)):
            t = threading.Thread(target=pump, args=(a, b))
            t.start()
            threads.append(t)
        ls.settimeout(2)  # more channels come within moments of the first
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
