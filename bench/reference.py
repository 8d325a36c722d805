"""Fetch QEMU's ``scripts/analyze-migration.py`` (the reference) at run time.

The script comes from Debian's ``qemu`` source package, version ``1:10.2.2+ds-1`` (the
version that produced the corpus' expected outputs; no Debian patch touches it).  It is
never committed: it is cached as ``bench/work/analyze-migration.py`` (gitignored).

How it is obtained, first that works:

1. the cached copy in ``bench/work`` (checked against its pinned sha256);
2. an upstream tarball already on this machine (``bench/work/apt-src``, ``$QEVM_QEMU_ORIG``
   or ``/tmp/srcfetch``), used only if its sha256 is the one Debian's ``.dsc`` lists;
3. ``apt-get source --download-only qemu=1:10.2.2+ds-1`` from Debian sid's deb-src, with
   a private apt configuration and state under ``bench/work/apt``: the machine's apt
   sources, lists and cache are neither read nor changed.

Usage: ``python bench/reference.py [--force] [--no-hint]`` prints the script's path.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from benchlib import WORK

PACKAGE = "qemu"
VERSION = "1:10.2.2+ds-1"
ORIG = "qemu_10.2.2+ds.orig.tar.xz"
#: From the Checksums-Sha256 of qemu_10.2.2+ds-1.dsc.
ORIG_SHA256 = "be05230fe47a6937cd29f28f562932c8125f9c93c2a82c625198f7a4aa601dfb"
MEMBER = "qemu-10.2.2/scripts/analyze-migration.py"
SCRIPT_SHA256 = "96c4b4048ba4ef25d80871c1374fed9be727e84ea2030538751c9dfab574ab77"

SCRIPT = WORK / "analyze-migration.py"
APT = WORK / "apt"
APT_SRC = WORK / "apt-src"
HINTS = [Path("/tmp/srcfetch") / ORIG]

SOURCES = """\
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _log(msg: str) -> None:
    print(f"reference: {msg}", file=sys.stderr)


def _apt_options() -> list[str]:
    """A private apt: own sources file, lists, cache; the system's status file unused."""
    sources = APT / "etc" / "sid-src.sources"
    sources.parent.mkdir(parents=True, exist_ok=True)
    sources.write_text(SOURCES)
    for d in (APT / "lists" / "partial", APT / "cache" / "archives" / "partial"):
        d.mkdir(parents=True, exist_ok=True)
    opts = [
        "-o",
        f"Dir::Etc::SourceList={sources}",
        "-o",
        "Dir::Etc::SourceParts=-",
        "-o",
        f"Dir::State::Lists={APT / 'lists'}",
        "-o",
        f"Dir::Cache={APT / 'cache'}",
        "-o",
        "Dir::State::status=/dev/null",
    ]
    if os.geteuid() == 0:
        # bench/work may not be reachable by the _apt user: download as root.
        opts += ["-o", "APT::Sandbox::User=root"]
    return opts


def _apt_download() -> Path:
    """``apt-get update`` + ``apt-get source --download-only`` into ``bench/work/apt-src``."""
    opts = _apt_options()
    APT_SRC.mkdir(parents=True, exist_ok=True)
    _log("apt-get update (private lists in bench/work/apt)")
    subprocess.run(["apt-get", *opts, "-q", "update"], check=True, stdout=sys.stderr)
    _log(f"apt-get source --download-only {PACKAGE}={VERSION}")
    subprocess.run(
        ["apt-get", *opts, "-q", "source", "--download-only", f"{PACKAGE}={VERSION}"],
        check=True,
        cwd=APT_SRC,
        stdout=sys.stderr,
    )
    tarball = APT_SRC / ORIG
    if _sha256(tarball) != ORIG_SHA256:
        raise RuntimeError(f"{tarball}: sha256 differs from the .dsc's")
    return tarball


def _extract(tarball: Path) -> None:
    """Extract only the script from the upstream tarball into ``bench/work``."""
    _log(f"extracting {MEMBER} from {tarball}")
    with tarfile.open(tarball, "r|xz") as tar:
        for info in tar:
            if info.name == MEMBER:
                f = tar.extractfile(info)
                assert f is not None
                data = f.read()
                break
        else:
            raise RuntimeError(f"{tarball} has no {MEMBER}")
    if hashlib.sha256(data).hexdigest() != SCRIPT_SHA256:
        raise RuntimeError(f"{MEMBER} in {tarball}: unexpected sha256")
    SCRIPT.parent.mkdir(parents=True, exist_ok=True)
    tmp = SCRIPT.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(SCRIPT)


def _local_tarballs() -> list[Path]:
    env = os.environ.get("QEVM_QEMU_ORIG")
    cands = [APT_SRC / ORIG, *([Path(env)] if env else []), *HINTS]
    return [p for p in cands if p.is_file()]


def reference_script(*, force: bool = False, hints: bool = True) -> Path:
    """The path of analyze-migration.py 10.2.2, fetching it if needed."""
    if not force and SCRIPT.is_file() and _sha256(SCRIPT) == SCRIPT_SHA256:
        return SCRIPT
    if hints:
        for tarball in _local_tarballs():
            if _sha256(tarball) == ORIG_SHA256:
                _extract(tarball)
                return SCRIPT
            _log(f"ignoring {tarball}: not the tarball of {PACKAGE} {VERSION}")
    _extract(_apt_download())
    return SCRIPT


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="ignore the cached script")
    ap.add_argument(
        "--no-hint",
        action="store_true",
        help="ignore tarballs already on the machine: always download with apt-get",
    )
    args = ap.parse_args()
    print(reference_script(force=args.force, hints=not args.no_hint))
    return 0


if __name__ == "__main__":
    sys.exit(main())
