"""Run a QEMU under test control: QMP over a unix socket, migrate to and from files."""

from __future__ import annotations

import os
import pathlib
import shlex
import subprocess
import time
from typing import Any

from qemu_util import Qmp, QmpError


class Vm:
    """One QEMU process with a QMP monitor (``with Vm(...) as vm``)."""

    def __init__(self, binary: str, args: list[str], workdir: pathlib.Path, name: str) -> None:
        self.sock_path = workdir / f"{name}.qmp"
        self.log_path = workdir / f"{name}.log"
        self.argv = [
            binary,
            *args,
            "-qmp",
            f"unix:{self.sock_path},server=on,wait=off",
        ]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self.qmp = Qmp(str(self.sock_path), alive=lambda: self.proc.poll() is None)
        except (OSError, QmpError):
            if self.proc.poll() is not None:
                raise QmpError(f"QEMU exited ({self.proc.returncode}): {self.log()}") from None
            self.proc.kill()
            self.proc.wait()
            raise QmpError(f"no QMP monitor: {self.log()}") from None

    @property
    def events(self) -> list[dict[str, Any]]:
        """The QMP events QEMU sent so far."""
        return self.qmp.events

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-2000:]

    def cmd(self, name: str, **arguments: Any) -> Any:
        """Run a QMP command; its ``return`` value."""
        try:
            return self.qmp.cmd(name, **arguments)
        except QmpError as e:
            raise QmpError(f"{e}: {self.log()}") from None

    def hmp(self, line: str) -> str:
        return self.cmd("human-monitor-command", **{"command-line": line})

    def wait_migration(self, timeout: float = 120) -> dict[str, Any]:
        """Poll query-migrate until the migration completed (or failed)."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.cmd("query-migrate")
            status = info.get("status")
            if status == "completed":
                return info
            if status in ("failed", "cancelled"):
                raise QmpError(f"migration {status}: {info} {self.log()}")
            if time.monotonic() > deadline:
                raise QmpError(f"migration still {status}: {self.log()}")
            time.sleep(0.05)

    def load(self, uri: str, timeout: float = 120) -> str:
        """Load an incoming migration into this QEMU (started with ``-incoming defer``).

        The monitor is connected before loading starts, so a QEMU that refuses
        the stream and exits cannot race the test.  Returns ``"completed"``,
        ``"failed"``, or ``"exited"`` when QEMU quit on the error; QEMU's own
        words are in :meth:`log`.
        """
        self.cmd("migrate-incoming", uri=uri)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                return "exited"
            try:
                status = self.cmd("query-migrate").get("status")
            except (QmpError, OSError):  # it exited while answering
                self.proc.wait(10)
                return "exited"
            if status in ("completed", "failed"):
                return status
            if time.monotonic() > deadline:
                raise QmpError(f"still loading: {self.log()}")
            time.sleep(0.05)

    def load_file(self, path: pathlib.Path) -> str:
        """:meth:`load` a stream file (``exec:cat``)."""
        return self.load(f"exec:cat {shlex.quote(str(path))}")

    def save(self, path: pathlib.Path) -> dict[str, Any]:
        """Migrate to ``path`` with ``exec:cat``."""
        self.cmd("migrate", uri=f"exec:cat > {shlex.quote(str(path))}")
        return self.wait_migration()

    def pmem(self, addr: int, size: int, path: pathlib.Path) -> bytes:
        self.cmd("pmemsave", val=addr, size=size, filename=str(path))
        return path.read_bytes()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.cmd("quit")
            except (QmpError, OSError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.qmp.close()
        self._log.close()
        if self.sock_path.exists():
            os.unlink(self.sock_path)

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
