"""Drive a real QEMU from tests: start it with QMP, save its state, load a stream back."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any


class QmpError(RuntimeError):
    """A command QEMU refused, or a monitor QEMU closed."""


class Qmp:
    """A minimal QMP client over a unix socket; the events QEMU sends are kept in ``events``.

    ``timeout`` bounds the wait for the socket to appear (and ``alive``, when
    given, ends it early once QEMU has exited); ``io_timeout`` each reply.
    """

    def __init__(
        self,
        path: str,
        timeout: float = 30,
        alive: Callable[[], bool] | None = None,
        io_timeout: float = 120,
    ) -> None:
        self.sock = connect_unix(path, timeout, alive)
        self.sock.settimeout(io_timeout)
        self.f = self.sock.makefile("rw")
        self.events: list[dict[str, Any]] = []
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self.f.readline()
        if not line:
            raise QmpError("QEMU closed the monitor")
        return json.loads(line)

    def cmd(self, command: str, /, **args: Any) -> Any:
        self.f.write(json.dumps({"execute": command, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            msg = self._read()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise QmpError(f"{command}: {msg['error']}")
            if "event" in msg:
                self.events.append(msg)

    def hmp(self, line: str) -> str:
        return self.cmd("human-monitor-command", **{"command-line": line})

    def wait_migration(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.cmd("query-migrate")
            if st.get("status") in ("completed", "failed", "cancelled"):
                return st
            time.sleep(0.05)
        raise TimeoutError("migration did not finish")

    def close(self) -> None:
        self.f.close()
        self.sock.close()


class Qemu:
    """A QEMU process with QMP; ``argv`` without -qmp/-display."""

    def __init__(self, argv: list[str], incoming: str | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="qevm-qemu-")
        sock = os.path.join(self.dir, "qmp")
        cmd = [*argv, "-display", "none", "-qmp", f"unix:{sock},server=on,wait=off"]
        if incoming:
            cmd += ["-incoming", incoming]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            self.qmp = Qmp(sock)
        except Exception:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise RuntimeError(f"QEMU did not start: {err.decode(errors='replace')}") from None

    def save(self, path: str) -> dict:
        """Migrate to ``path`` with exec:cat and wait until done."""
        self.qmp.cmd("migrate", uri=f"exec:cat > {path}")
        st = self.qmp.wait_migration()
        if st.get("status") != "completed":
            raise RuntimeError(f"migration failed: {st}")
        return st

    def close(self) -> None:
        try:
            self.qmp.cmd("quit")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.qmp.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Qemu:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def connect_unix(
    path: str | os.PathLike[str], timeout: float = 30, alive: Callable[[], bool] | None = None
) -> socket.socket:
    """A connection to the unix socket QEMU is about to listen on (QMP, gdbstub), waiting
    up to ``timeout`` seconds for it to appear, or until ``alive()`` says QEMU has
    exited; the socket times out after as long."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(os.fspath(path))
        except OSError:
            sock.close()
            if time.monotonic() > deadline or (alive is not None and not alive()):
                raise
            time.sleep(0.05)
            continue
        sock.settimeout(timeout)
        return sock


def qemu_binary(binary: str) -> str:
    """The QEMU to run for ``binary``: ``$QEVM_QEMU_<ARCH>`` (e.g. QEVM_QEMU_LOONGARCH64) or
    PATH's."""
    return os.environ.get("QEVM_QEMU_" + binary.rsplit("-", 1)[-1].upper(), binary)


def save_capture(
    outdir: pathlib.Path, name: str, mig: pathlib.Path, recipe: dict[str, Any]
) -> pathlib.Path:
    """A generated stream as it is committed: ``NAME.mig.xz`` and its recipe ``NAME.json``."""
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / f"{name}.mig.xz"
    xz_file(mig, out)
    (outdir / f"{name}.json").write_text(json.dumps(recipe, indent=1) + "\n")
    return out


def make_each(
    names: list[str],
    make: Callable[[str], pathlib.Path],
    skip: Callable[[str], str | None] = lambda name: None,
) -> int:
    """A generator's command line: ``make`` each recipe (unless ``skip`` says why not), saying
    how large each stream came out and how long it took."""
    for name in names:
        why = skip(name)
        if why:
            print(f"{name}: {why}, skipped")
            continue
        t = time.time()
        out = make(name)
        print(f"{name}: {out.stat().st_size} bytes in {time.time() - t:.1f} s")
    return 0


def xz_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Compress ``src`` into ``dst`` as tightly as xz can (committed test data)."""
    import lzma

    with open(src, "rb") as f, lzma.open(dst, "wb", preset=9 | lzma.PRESET_EXTREME) as out:
        shutil.copyfileobj(f, out, 1 << 22)


def qemu_version(binary: str = "qemu-system-x86_64") -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return out.split("version", 1)[1].split()[0] if "version" in out else "?"
