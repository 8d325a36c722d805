"""``qevm check`` against real loads: every verdict comes from a destination QEMU.

* the committed pairs (tests/data/check/pairs.tar.xz, made by gen_check.py
  with QEMU 7.2 and 10.0) and the corpus pairs (../shared/corpus/check):
  the verdict agrees with QEMU's, and the first problem names what QEMU's
  error names (RAM block, machine type, section, capability, UUID);
* a description or a schema alone never claims a failure QEMU does not make;
* streams edited here (a section version, a subsection name, an ``*_EQUAL``
  or ``POSITIVE_LE`` value) and loaded by the installed QEMU.
"""

from __future__ import annotations

import json
import pathlib
import re
import struct
import subprocess
import sys
import tarfile

import pytest
from conftest import CORPUS, DATA, HAVE_CORPUS, have_qemu, unpack

import qevm
from qevm.analysis import check
from qevm.analysis.problems import Report

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import gen_check  # noqa: E402

PAIRS_TAR = DATA / "check" / "pairs.tar.xz"


@pytest.fixture(scope="session")
def pairs_dir(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("pairs")
    with tarfile.open(PAIRS_TAR) as tar:
        tar.extractall(out, filter="data")
    return out


def _pairs(folder: pathlib.Path) -> list[str]:
    return sorted(p.name.removesuffix(".verdict.json") for p in folder.glob("*.verdict.json"))


COMMITTED = sorted(
    m.name.removesuffix(".verdict.json")
    for m in tarfile.open(PAIRS_TAR).getmembers()
    if m.name.endswith(".verdict.json")
)
CORPUS_PAIRS = (
    sorted(p.name.removesuffix(".verdict.json") for p in (CORPUS / "check").glob("*.verdict.json"))
    if HAVE_CORPUS
    else []
)


def qemu_errors(verdict: dict) -> list[str]:
    return [ln for ln in verdict["qemu_errors"] if "warning:" not in ln]


def assert_names_qemu(report: Report, verdict: dict, p=None) -> None:
    """The first problem (or ``p``) names what QEMU's error lines name."""
    p = p or report.first()
    assert p is not None
    text = "\n".join(qemu_errors(verdict))
    if p.kind.startswith("ram"):
        subject = p.field
    elif p.kind == "machine":
        subject = p.source
    elif p.kind == "capability":
        subject = p.field
    elif p.kind == "uuid":
        subject = p.source
    else:
        subject = p.section
    assert subject and str(subject) in text, (p.kind, subject, text)
    if p.kind == "device":
        # a device's own check: QEMU's very words (up to what qevm cannot know)
        assert p.qemu and p.qemu.removesuffix("...") in text, (p.qemu, text)


def refused_features(verdict: dict) -> tuple[int, int] | None:
    """QEMU's ``Features X unsupported. Allowed features: Y``: (X, X & ~Y)."""
    for line in qemu_errors(verdict):
        m = re.search(r"Features 0x([0-9a-f]+) unsupported\. Allowed features: 0x([0-9a-f]+)", line)
        if m:
            got, allowed = int(m.group(1), 16), int(m.group(2), 16)
            return got, got & ~allowed
    return None


def assert_agrees(report: Report, verdict: dict, name: str) -> None:
    """qevm's verdict is QEMU's, or — only where the destination's stream cannot show it
    (the virtio features its device offers) — "cannot tell", naming the features QEMU
    refused when it did."""
    messages = (name, [p.message for p in report.problems])
    if report.loads is None:
        doubts = [p for p in report.problems if not p.certain]
        assert doubts and all(p.field.endswith("guest features") for p in doubts), messages
        refused = refused_features(verdict)
        if verdict["loads"]:
            return
        assert refused is not None, (messages, qemu_errors(verdict))
        got, bad = refused
        doubt = next(p for p in doubts if p.qemu.startswith(f"Features {got:#x} "))
        assert doubt.source & bad == bad and not doubt.destination & bad, messages
        assert_names_qemu(report, verdict, doubt)
        return
    assert report.loads == verdict["loads"], messages
    if not verdict["loads"]:
        assert_names_qemu(report, verdict)


def _file(folder: pathlib.Path, name: str) -> pathlib.Path:
    """``name`` in ``folder``, decompressed when the folder has it xz'd (the corpus)."""
    plain = folder / name
    return plain if plain.exists() else unpack(folder / f"{name}.xz")


def _check_pair(folder: pathlib.Path, name: str) -> None:
    verdict = json.loads((folder / f"{name}.verdict.json").read_text())
    src, dst, schema = (
        _file(folder, f"{name}.{part}") for part in ("src.mig", "dst.mig", "dst.vmstate.json")
    )
    report = check(src, dst)
    both = check(src, dst, schema=schema)
    for r in (report, both):
        assert_agrees(r, verdict, name)
    # Partial knowledge never claims a failure QEMU does not make.
    desc = qevm.load_description(dst)
    from qevm.analysis.target import from_description

    for partial in (check(src, from_description(desc, "desc")), check(src, schema)):
        # (what it does not know, say the machine type, QEMU may stop at first)
        if verdict["loads"]:
            assert partial.loads is not False, (name, [p.message for p in partial.problems])


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_pairs_agree_with_qemu(pairs_dir, name):
    _check_pair(pairs_dir, name)


@pytest.mark.parametrize("name", CORPUS_PAIRS)
def test_corpus_pairs_agree_with_qemu(name):
    _check_pair(CORPUS / "check", name)


def test_layout_problem_names_the_first_field_out_of_step(pairs_dir):
    """Memory hotplug slots: the ACPI device state's ``devs`` array, sized by -m slots."""
    src, dst = pairs_dir / "slots-2-to-0.src.mig", pairs_dir / "slots-2-to-0.dst.mig"
    p = check(src, dst).first()
    assert p.kind == "layout" and p.section == "0000:00:1f.0/ICH9LPC"
    assert p.field == "pm/ich9_pm/memhp/acpi_memory_hotplug/devs"
    assert p.qemu == "Missing section footer for 0000:00:1f.0/ICH9LPC"
    assert any("slots" in d for d in p.details)
    # the other way round: the destination reads elements the source did not write
    p = check(pairs_dir / "slots-0-to-2.src.mig", pairs_dir / "slots-0-to-2.dst.mig").first()
    assert p.field == "pm/ich9_pm/memhp/acpi_memory_hotplug/devs"
    assert "did not write" in p.details[0]


def test_cli_exit_codes_and_json(pairs_dir):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "qevm", *args], capture_output=True, text=True, timeout=120
        )

    ok = run(
        "check",
        str(pairs_dir / "same-q35-72.src.mig"),
        "--against",
        str(pairs_dir / "same-q35-72.dst.mig"),
    )
    assert ok.returncode == 0, ok.stderr
    assert "loads" in ok.stdout
    bad = run(
        "check",
        str(pairs_dir / "ram-32-to-64.src.mig"),
        "--against",
        str(pairs_dir / "ram-32-to-64.dst.mig"),
        "--json",
    )
    assert bad.returncode == 1
    out = json.loads(bad.stdout)
    assert out["loads"] is False
    first = out["problems"][0]
    assert {"kind", "section", "field", "message"} <= set(first)
    assert first["kind"] == "ram-size" and first["field"] == "pc.ram"
    err = run("check", str(pairs_dir / "ram-32-to-64.src.mig"), "--against", "/nonexistent")
    assert err.returncode == 2 and "Traceback" not in err.stderr


# -- streams edited here, loaded by the installed QEMU -------------------------------

BASE = gen_check.Side("qemu-system-x86_64", ["-M", "pc-q35-7.2", "-m", "32"])


def _section_header(mig, idstr: str):
    for rec in mig.section_records():
        if rec.entry.idstr == idstr and rec.version is not None:
            return rec
    raise AssertionError(idstr)


def _version_offset(rec) -> int:
    return rec.offset + 1 + 4 + 1 + len(rec.entry.idstr.encode()) + 4


def _field(node, path: str):
    """The FieldValue at ``a/b/c`` (struct fields and subsections by name)."""
    *outer, last = path.split("/")
    for part in outer:
        sub = node.subsection(part)
        node = sub if sub is not None else node.field(part).value
    return node.field(last)


def _edit_version(data: bytearray, mig, idstr: str, value: int) -> None:
    off = _version_offset(_section_header(mig, idstr))
    data[off : off + 4] = struct.pack(">I", value)


def _edit_field(data: bytearray, mig, idstr: str, path: str, value: int) -> None:
    fv = _field(mig.device(idstr).state, path)
    fmt = {1: ">b", 2: ">h", 4: ">i", 8: ">q"}[fv.size]
    data[fv.offset : fv.offset + fv.size] = struct.pack(fmt, value)


def _edit_subsection(data: bytearray, mig, idstr: str, name: str) -> None:
    st = mig.device(idstr).state
    for sub in st.subsections:
        if sub.name == name:
            at = sub.offset + 2 + len(name) - 1
            data[at] = ord("X")
            return
    raise AssertionError(name)


EDITS = {
    # savevm.c: a section version above the destination's
    "version-too-new": lambda d, m: _edit_version(d, m, "timer", 3),
    # vmstate.c: below the destination's minimum_version_id (needs the schema)
    "version-too-old": lambda d, m: _edit_version(d, m, "mc146818rtc", 0),
    # vmstate.c: a subsection the destination does not know
    "unknown-subsection": lambda d, m: _edit_subsection(d, m, "fw_cfg", "fw_cfg/acpi_mr"),
    # vmstate-types.c get_int32_equal
    "int32-equal": lambda d, m: _edit_field(d, m, "PCIBUS", "nirq", 5),
    # vmstate-types.c get_int32_le (PCIDevice's version_id)
    "int32-le": lambda d, m: _edit_field(d, m, "0000:00:00.0/mch", "parent_obj/version_id", 7),
}


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    if not have_qemu():
        pytest.skip("no qemu-system-x86_64")
    work = tmp_path_factory.mktemp("edited")
    base = work / "base.mig"
    gen_check.save(BASE, base, work)
    schema = work / "base.vmstate.json"
    gen_check.dump_vmstate(BASE, schema)
    out = {}
    with qevm.open(base) as mig:
        for name, edit in EDITS.items():
            data = bytearray(base.read_bytes())
            edit(data, mig)
            path = work / f"{name}.mig"
            path.write_bytes(data)
            out[name] = (path, gen_check.load(BASE, path, work))
    return base, schema, out


@pytest.mark.parametrize("name", sorted(EDITS))
def test_edited_streams_agree_with_qemu(edited, name):
    base, schema, cases = edited
    path, verdict = cases[name]
    assert not verdict["loads"], verdict  # each edit is one QEMU refuses
    both = check(path, base, schema=schema)
    assert both.loads is False, [p.message for p in both.problems]
    assert_names_qemu(both, verdict)
    if name == "version-too-old":
        # A stream does not carry minimum versions: without the schema, a note.
        alone = check(path, base)
        assert any("minimum" in w for w in alone.warnings), alone.warnings
        return
    alone = check(path, base)
    assert alone.loads is False, [p.message for p in alone.problems]
    assert_names_qemu(alone, verdict)


def test_unedited_base_loads(edited):
    base, schema, _ = edited
    assert check(base, base, schema=schema).loads is True


def test_committed_pairs_span_qemu_versions():
    """The pairs were made with Debian's 7.2 and trixie's 10.0, both ways (recorded per pair)."""
    versions = set()
    with tarfile.open(PAIRS_TAR) as tar:
        for m in tar.getmembers():
            if m.name.endswith(".verdict.json"):
                v = json.load(tar.extractfile(m))
                versions.update((v["src_qemu"], v["dst_qemu"]))
    assert {"7.2.22", "10.0.13"} <= versions


def test_device_decoders_plug_in(pairs_dir):
    """What qevm.devices will register: an opaque field's reader and a check per VMSD."""
    from qevm.analysis import hooks
    from qevm.analysis.problems import Problem

    src, dst = pairs_dir / "net-vectors.src.mig", pairs_dir / "net-vectors.dst.mig"
    seen = {}

    def read_virtio(ctx):
        seen.setdefault("readers", []).append(ctx)
        # a reader knows what the destination's load code reads and where it fails
        bad = Problem("device", "Bad config data", section=ctx.section, offset=ctx.offset)
        return hooks.FieldVerdict(size=len(ctx.data), problems=[bad])

    def check_rng(ctx):
        seen.setdefault("checks", []).append(ctx.section)
        return []

    def check_config(ctx):
        seen.setdefault("configs", []).append((ctx.section, ctx.read_size, ctx.offset))
        return []

    saved = dict(hooks.FIELD_READERS), list(hooks.DEVICE_CHECKS), dict(hooks.FIELD_CHECKS)
    try:
        hooks.register_field_reader("virtio")(read_virtio)
        hooks.register_device_check("virtio-*")(check_rng)
        hooks.register_field_check("pci config")(check_config)
        report = check(src, dst)
    finally:
        hooks.FIELD_READERS.clear()
        hooks.FIELD_READERS.update(saved[0])
        hooks.DEVICE_CHECKS[:] = saved[1]
        hooks.FIELD_CHECKS.clear()
        hooks.FIELD_CHECKS.update(saved[2])
    # asked about every virtio field, whatever the two sides' sizes
    ctx = next(c for c in seen["readers"] if c.section.endswith("/virtio-net"))
    assert ctx.field.type == "virtio" and ctx.source_field.size != ctx.field.size
    with qevm.open(src) as mig:
        rec = mig.device(ctx.section).record
    assert ctx.offset + len(ctx.data) == rec.body_end  # the source's bytes up to the footer
    assert report.loads is False
    assert report.first().kind == "device" and report.first().message == "Bad config data"
    assert ctx.section in seen["checks"]
    # every PCI function's config space, as the destination's layout reads it
    sizes = {size for _, size, _ in seen["configs"]}
    assert sizes <= {256, 4096} and len(seen["configs"]) > 3
