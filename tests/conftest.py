"""Test data: the committed subset in tests/data, and the whole corpus when present.

Streams are stored xz-compressed; :func:`unpack` decompresses one into a
per-session cache the first time a test asks for it.  The shared corpus
(``../shared/corpus`` next to the repository, or ``$QEVM_CORPUS``) is used
when it exists, so CI also checks every stream in it.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import pathlib
import shutil
import struct
import tempfile

import pytest

DATA = pathlib.Path(__file__).parent / "data"
CORPUS = pathlib.Path(
    os.environ.get("QEVM_CORPUS", pathlib.Path(__file__).resolve().parents[2] / "shared" / "corpus")
)
HAVE_CORPUS = (CORPUS / "README.md").exists()

_CACHE = pathlib.Path(tempfile.mkdtemp(prefix="qevm-tests-"))

# Subprocesses (`python -m qevm`) import this checkout's qevm, not whichever one
# pip installed (a second work tree of the repository, say).
_SRC = str(pathlib.Path(__file__).resolve().parents[1] / "src")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH")) if p)


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    shutil.rmtree(_CACHE, ignore_errors=True)


def unpack(path: pathlib.Path) -> pathlib.Path:
    """The decompressed file for ``path`` (``.xz`` files), cached for the session."""
    path = pathlib.Path(path)
    if path.suffix != ".xz":
        return path
    key = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    out = _CACHE / f"{key}-{path.name[:-3]}"
    if not out.exists():
        tmp = out.with_suffix(".part")
        with lzma.open(path) as src, open(tmp, "wb") as dst:
            while True:
                chunk = src.read(1 << 22)
                if not chunk:
                    break
                # keep long zero runs sparse (mapped-ram and libvirt sparse images)
                if chunk.count(0) == len(chunk):
                    dst.seek(len(chunk), os.SEEK_CUR)
                else:
                    dst.write(chunk)
            dst.truncate()
        tmp.rename(out)
    return out


def _catalog(folder: str, suffix: str) -> dict[str, pathlib.Path]:
    found: dict[str, pathlib.Path] = {}
    for base in (DATA, CORPUS if HAVE_CORPUS else None):
        if base is None:
            continue
        d = base / folder if folder != "streams" or base is DATA else base
        for p in sorted(d.glob(f"*{suffix}")):
            found.setdefault(p.name[: -len(suffix)], p)
    return found


#: name -> path of every top-level stream (.mig.xz) available
STREAMS = _catalog("streams", ".mig.xz")
#: name -> path of every live capture's main channel
LIVE = _catalog("live", ".mig.xz")
#: name -> path of the streams tests/gen_streams.py made with QEMU 7.2
GENERATED = {p.name[: -len(".mig.xz")]: p for p in sorted((DATA / "generated").glob("*.mig.xz"))}
#: name -> path of the real Linux guests (corpus only)
LINUX = _catalog("linux", ".mig.xz") if HAVE_CORPUS else {}


def meta(path: pathlib.Path) -> dict:
    """The ``NAME.json`` recipe next to a stream (how QEMU made it)."""
    name = path.name.removesuffix(".xz").removesuffix(".mig").removesuffix(".qcow2")
    return json.loads((path.parent / f"{name}.json").read_text())


def switched_to_postcopy(path: pathlib.Path) -> bool:
    """Whether the stream's recipe switched the migration to postcopy (QEMU then
    writes no JSON description)."""
    try:
        return "migrate-start-postcopy" in json.dumps(meta(path))
    except FileNotFoundError:
        return False


def expected(name: str, kind: str) -> pathlib.Path | None:
    """analyze-migration.py's output for ``name`` (``state``, ``desc``, ``blocks``)."""
    for base in (DATA / "expected", CORPUS / "expected"):
        p = base / f"{name}.upstream-{kind}.json.xz"
        if p.exists():
            return p
    return None


def pattern1m() -> bytes:
    """corpus/patterns/pattern1m.bin: sha256 of i (u32 LE) for i in 0..32767."""
    return b"".join(hashlib.sha256(struct.pack("<I", i)).digest() for i in range(32768))


def all_stream_paths() -> dict[str, pathlib.Path]:
    """Every QEVM stream file, top-level, live and Linux."""
    return {**STREAMS, **LIVE, **LINUX}


#: the debug kernels of the corpus' Linux guests (``.ci/kernel-debug`` extracts them here)
VMLINUX_DIR = pathlib.Path(
    os.environ.get(
        "QEVM_VMLINUX_DIR",
        pathlib.Path(os.environ.get("QEVM_CACHE", "/var/cache/qevm")) / "vmlinux",
    )
)


def vmlinux(release: str) -> pathlib.Path:
    """The debug vmlinux of kernel ``release`` (``6.1.0-56-amd64``).

    Skips when it is missing, unless ``QEVM_REQUIRE_VMLINUX`` is set (as
    ``.ci/run`` does after fetching them), where a missing file fails.
    """
    path = VMLINUX_DIR / f"vmlinux-{release}"
    if not path.exists():
        msg = f"{path} is missing: run .ci/kernel-debug"
        if os.environ.get("QEVM_REQUIRE_VMLINUX"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def have_qemu(binary: str = "qemu-system-x86_64") -> bool:
    return shutil.which(binary) is not None


@pytest.fixture(scope="session")
def corpus() -> pathlib.Path:
    if not HAVE_CORPUS:
        pytest.skip("the shared corpus is not available")
    return CORPUS
