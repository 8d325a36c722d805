"""Every command that writes a file refuses to write over one of its inputs.

The same file is recognised by its inode, whatever names it: the path
itself, another spelling, a symlink or a hard link; the inputs are the
stream, ``--channel`` files, ``--desc`` and standard input.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import DATA, LIVE, unpack

from qevm.cli import main

SMALL = DATA / "layouts" / "isapc.mig.xz"


@pytest.fixture
def stream(tmp_path):
    p = tmp_path / "vm.mig"
    shutil.copyfile(unpack(SMALL), p)
    return p


def _spellings(p):
    """The input under four names: itself, ./-relative, a symlink, a hard link."""
    link = p.parent / "link.mig"
    link.symlink_to(p.name)
    hard = p.parent / "hard.mig"
    os.link(p, hard)
    return [str(p), os.path.join(str(p.parent), ".", p.name), str(link), str(hard)]


def _refused(capsys, argv, target) -> None:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "would overwrite the input" in err and str(target) in err


@pytest.mark.parametrize(
    "command",
    [
        ["memory", "{in}", "-o", "{out}"],
        ["memory", "{in}", "--format", "raw", "-o", "{out}"],
        ["edit", "{in}", "-o", "{out}"],
        ["convert", "{in}", "-o", "{out}"],
    ],
)
def test_output_over_the_input_is_refused(command, stream, capsys):
    before = stream.read_bytes()
    for out in _spellings(stream):
        _refused(capsys, [a.format(**{"in": stream, "out": out}) for a in command], out)
    assert stream.read_bytes() == before


def test_output_over_a_channel_or_description_is_refused(tmp_path, capsys):
    main_ch = tmp_path / "m.mig"
    shutil.copyfile(unpack(LIVE["multifd-72"]), main_ch)
    chans = []
    for i in (1, 2, 3):
        c = tmp_path / f"ch{i}.bin"
        shutil.copyfile(unpack(DATA / "live" / f"multifd-72.ch{i}.bin.xz"), c)
        chans += ["--channel", c]
    before = (tmp_path / "ch2.bin").read_bytes()
    for cmd in ("convert", "memory"):
        _refused(capsys, [cmd, main_ch, *chans, "-o", tmp_path / "ch2.bin"], tmp_path / "ch2.bin")
    desc = tmp_path / "d.mig"
    shutil.copyfile(unpack(SMALL), desc)
    _refused(capsys, ["edit", main_ch, "--desc", desc, "-o", desc], desc)
    assert (tmp_path / "ch2.bin").read_bytes() == before


def test_extract_refuses_a_block_file_or_json_over_the_input(tmp_path, capsys):
    """extract writes desc.json, state.json and one file per block into DIR: none may
    be the input (a stream saved as DIR/pc.ram, or as DIR/state.json)."""
    for name in ("pc.ram", "state.json"):
        d = tmp_path / name.replace(".", "_")
        d.mkdir()
        p = d / name
        shutil.copyfile(unpack(SMALL), p)
        before = p.read_bytes()
        _refused(capsys, ["extract", p, "-o", d], p)
        assert p.read_bytes() == before


def test_standard_input_that_is_the_output_file(stream, tmp_path):
    """``qevm memory - -o X < X``: standard input is the file X."""
    before = stream.read_bytes()
    with open(stream, "rb") as f:
        r = subprocess.run(
            [sys.executable, "-m", "qevm", "memory", "-", "-o", str(stream)],
            stdin=f,
            capture_output=True,
            text=True,
        )
    assert r.returncode == 2 and "would overwrite the input (standard input)" in r.stderr
    assert stream.read_bytes() == before


def test_standard_output_appending_to_the_input(stream):
    """``qevm ram X --raw >> X``: standard output is the input."""
    before = stream.read_bytes()
    with open(stream, "ab") as f:
        r = subprocess.run(
            [sys.executable, "-m", "qevm", "ram", str(stream), "--offset", "0", "--raw"],
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
        )
    assert r.returncode == 2 and "standard output is the input" in r.stderr
    assert stream.read_bytes() == before


def test_a_different_file_is_written(stream, tmp_path, capsys):
    assert main(["memory", str(stream), "-o", str(tmp_path / "vm.elf")]) == 0
    assert (tmp_path / "vm.elf").stat().st_size > 0
