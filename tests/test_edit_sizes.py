"""``qevm edit --set`` of a buffer with another length: only where QEMU reads the length.

QEMU loads a ``VMSTATE_BUFFER`` (or ``VMSTATE_BUFFER_POINTER_UNSAFE``) with the
size compiled into its own VMSD: bytes more or fewer and the rest of the
section is misread ("Missing section footer").  A ``VMSTATE_VBUFFER*`` takes
its length from a 32-bit field of the same structure, loaded before it: such
a buffer may change length together with that field.  The real ones in the
committed streams: spapr's NVRAM and device tree, XIVE's status bytes, the
s390 CPU's saved interrupt state, vmxnet3's multicast list.
"""

from __future__ import annotations

import shutil

import pytest
from conftest import STREAMS, unpack
from qemuvm import Vm

import qevm
from qevm.cli import main
from qevm.edit import set_field
from qevm.writer import StreamWriter, write_stream


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# (stream, buffer path, its size field (path), new length)
VARIABLE = [
    ("ppc64-pseries-11.1", "nvram@71000000/spapr_nvram:buf", "size", 4096),
    ("ppc64-pseries-11.1", "xive-source:status", "nr_irqs", 1024),
    ("s390x-11.1", "cpu:irqstate", "irqstate_saved_size", 16),
    ("pc-devices-7.2", "0000:00:0e.0/vmxnet3:vmxnet3/mcast_list/mcast_list", None, 12),
]


@pytest.mark.parametrize("name,path,size_field,length", VARIABLE)
def test_variable_buffer_changes_length_with_its_size_field(
    name, path, size_field, length, tmp_path, capsys
):
    src = unpack(STREAMS[name])
    data = bytes(range(1, 256)) * (length // 255 + 1)
    data = data[:length]
    dev = path.rpartition(":")[0]
    size_path = f"{dev}:{size_field}" if size_field else f"{dev}:mcast_list_buff_size"
    out = tmp_path / "out.mig"
    # the buffer alone: refused, naming the field that holds its length
    rc, _, err = _cli(capsys, "edit", src, "-o", out, "--set", f"{path}={data.hex()}")
    assert rc == 2 and not out.exists()
    assert f"set it to {length} too" in err and repr(size_path.rsplit(":", 1)[1]) in err
    # with the field (in either order): written, and read back at the new length
    rc, _, err = _cli(
        capsys, "edit", src, "-o", out, "--set", f"{size_path}={length}",
        "--set", f"{path}={data.hex()}",
    )  # fmt: skip
    assert rc == 0, err
    with qevm.open(out) as mig:
        (ref,) = qevm.edit.resolve(mig, path)
        assert ref.value == data and ref.target.fv.desc.size == length


FIXED = [
    ("q35-11.1", "ps2kbd:parent_obj/queue.data", 256),
    ("pc-devices-7.2", "0000:00:0e.0/vmxnet3:parent_obj[0]/config[1]", 4096),
]


@pytest.mark.parametrize("name,path,size", FIXED)
def test_fixed_buffer_keeps_its_length(name, path, size, tmp_path, capsys):
    src = unpack(STREAMS[name])
    out = tmp_path / "out.mig"
    for n in (size - 1, size + 44):
        rc, _, err = _cli(capsys, "edit", src, "-o", out, "--set", f"{path}={'ab' * n}")
        assert rc == 2 and f"give {size} bytes" in err and not out.exists()
    rc, _, err = _cli(capsys, "edit", src, "-o", out, "--set", f"{path}={'ab' * size}")
    assert rc == 0


# -- what QEMU loads ---------------------------------------------------------------------


def _vm_args(*extra: str) -> list[str]:
    return ["-M", "pc", "-m", "32", "-display", "none", "-nodefaults", "-S",
            "-device", "vmxnet3,id=net0", "-device", "i8042", *extra]  # fmt: skip


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")
def test_qemu_loads_a_resized_vbuffer_and_not_a_resized_buffer(tmp_path, capsys):
    qemu = shutil.which("qemu-system-x86_64")
    saved = tmp_path / "saved.mig"
    with Vm(qemu, _vm_args(), tmp_path, "src") as vm:
        vm.save(saved)
    with qevm.open(saved) as mig:
        dev = next(d.name for d in mig.devices("*vmxnet3"))
    macs = "01005e0000fb" + "3333000000fb"
    ok = tmp_path / "ok.mig"
    rc, _, err = _cli(
        capsys, "edit", saved, "-o", ok,
        "--set", f"{dev}:vmxnet3/mcast_list/mcast_list={macs}",
        "--set", f"{dev}:mcast_list_buff_size=12", "--set", f"{dev}:mcast_list_len=2",
    )  # fmt: skip
    assert rc == 0, err
    with Vm(qemu, _vm_args("-incoming", "defer"), tmp_path, "ok") as vm:
        assert vm.load_file(ok) == "completed", vm.log()
    # what edit refuses, written anyway through the writer: QEMU rejects it
    bad = tmp_path / "bad.mig"
    with qevm.open(saved) as mig:
        set_field(mig, "ps2kbd:parent_obj/queue.data", "ab" * 300)
        with pytest.raises(qevm.UsageError):
            write_stream(mig, bad)
        with open(bad, "wb") as f:
            StreamWriter(mig).write(f)
    with Vm(qemu, _vm_args("-incoming", "defer"), tmp_path, "bad") as vm:
        assert vm.load_file(bad) in ("failed", "exited")
        assert "Missing section footer for ps2kbd" in vm.log()
