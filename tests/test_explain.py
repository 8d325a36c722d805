"""``qevm explain``: where a section does not fit its description, and what would.

A source stream read with its destination's description (``--desc``) is a
section its description does not fit.  What would fit is known without
qevm's search: the two QEMU-written descriptions, walked side by side, name
the array whose length differs (and the source's length).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tarfile

import pytest
from conftest import DATA

import qevm
from qevm.analysis.explain import explain

PAIRS = ["slots-2-to-0", "slots-0-to-2", "slots-2-to-4-pc", "xhci-ports"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("explain")
    with tarfile.open(DATA / "check" / "pairs.tar.xz") as tar:
        for m in tar.getmembers():
            if m.name.split(".")[0] in PAIRS + ["same-q35-72"] and ".mig" in m.name:
                tar.extract(m, out, filter="data")
    return out


def _arrays(desc: dict, path: str = "") -> dict[str, tuple[int, int]]:
    """``path -> (elements, element size)`` of every field of a JSON description."""
    out: dict[str, tuple[int, int]] = {}
    counts: dict[str, list[int]] = {}
    for f in desc.get("fields", []):
        p = f"{path}/{f['name']}" if path else f["name"]
        c = counts.setdefault(p, [0, f["size"]])
        c[0] += f.get("array_len", 1)
        if "struct" in f:
            out.update(_arrays(f["struct"], p))
    out.update({p: (c[0], c[1]) for p, c in counts.items()})
    for s in desc.get("subsections", []):
        out.update(_arrays(s, f"{path}/{s['vmsd_name']}" if path else s["vmsd_name"]))
    return out


def _differing_array(src: dict, dst: dict) -> tuple[str, int, int]:
    """The one field whose length differs (absent = 0 elements): path, source length, size."""
    a, b = _arrays(src), _arrays(dst)
    diffs = [p for p in set(a) | set(b) if a.get(p, (0, 0))[0] != b.get(p, (0, 0))[0]]
    # an array's elements differ along with it: the outermost path is the array
    top = [
        p
        for p in diffs
        if not any(p != q and p.startswith(q + "[") or p.startswith(q + "/") for q in diffs)
    ]
    assert len(top) == 1, top
    p = top[0]
    return p, a.get(p, (0, 0))[0], a.get(p, b.get(p))[1]


@pytest.mark.parametrize("name", PAIRS)
def test_explains_the_array_the_configuration_sized(pairs, name):
    src, dst = pairs / f"{name}.src.mig", pairs / f"{name}.dst.mig"
    dst_desc = qevm.load_description(dst)
    with qevm.open(src, desc=dst_desc, decode_devices=False, strict=False) as mig:
        results = explain(mig)
    bad = [r for r in results if not r.fits]
    assert len(bad) == 1
    ex = bad[0]
    src_json = json.loads(qevm.load_description(src).text)
    dst_json = json.loads(dst_desc.text)
    sdev = next(d for d in src_json["devices"] if d["name"] == ex.section)
    ddev = next(d for d in dst_json["devices"] if d["name"] == ex.section)
    path, count, size = _differing_array(sdev, ddev)
    first = ex.fixes[0]
    if first.kind == "array-length":
        assert (first.path, first.value) == (path, count)
    else:  # the destination's description has no such field: bytes after its VMSD's fields
        assert first.kind == "gap" and path.startswith(first.path + "/")
        assert first.value == count * size
    assert ex.steps and ex.read_end != ex.footer_offset or ex.stop


def test_a_stream_fits_its_own_description(pairs):
    with qevm.open(pairs / "same-q35-72.src.mig", decode_devices=False) as mig:
        results = explain(mig)
    assert results and all(r.fits for r in results)


def test_cli(pairs):
    src, dst = pairs / "xhci-ports.src.mig", pairs / "xhci-ports.dst.mig"

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "qevm", "explain", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = run(str(src), "--desc", str(dst))
    assert r.returncode == 1
    assert "xhci/ports at" in r.stdout and "12 elements instead of 8" in r.stdout
    j = json.loads(run(str(src), "--desc", str(dst), "--json").stdout)
    sec = j["sections"][0]
    assert sec["section"] == "0000:00:01.0/xhci" and not sec["fits"]
    assert sec["fixes"][0]["path"] == "xhci/ports" and sec["fields"]
    ok = run(str(pairs / "same-q35-72.src.mig"))
    assert ok.returncode == 0 and "fit their description" in ok.stdout
