#!/usr/bin/env bash
# Makes the qcow2 images in this folder with a real QEMU: one `savevm` of a paused
# microvm (16 MiB, no devices) into images of different layouts, then a disk-only
# snapshot taken by qemu-img.  Usage: make.sh [OUTDIR]
set -euo pipefail
out=${1:-$(dirname "$0")}
make() {
    local name=$1 opts=$2 img
    img=$(mktemp -d)/$name.qcow2
    qemu-img create -q -f qcow2 -o "$opts" "$img" 4M
    printf 'savevm vm1\nquit\n' | qemu-system-x86_64 -M microvm -m 16 -S -nodefaults \
        -display none -drive "file=$img,if=none,id=d0" -monitor stdio >/dev/null
    qemu-img snapshot -c disk1 "$img"
    xz -9 -c "$img" >"$out/$name.qcow2.xz"
    rm -r "$(dirname "$img")"
}
make v2-c4k compat=0.10,cluster_size=4096
make c512 cluster_size=512
make extl2-zstd-c16k extended_l2=on,cluster_size=16384,compression_type=zstd
make c2m cluster_size=2M
