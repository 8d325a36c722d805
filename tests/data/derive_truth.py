"""Derive the compact ground truth committed here from ../shared/corpus.

The live captures' ground truth is a pmemsave of the destination's
guest-physical 0..256 MiB (256 MiB each).  Instead of committing it, this
script records the sha256 of every 1 MiB of it, with 0xa0000-0xfffff zeroed
(pmemsave reads that window through VGA/ROM mappings, not pc.ram), in
live/NAME.pmem-sha256.json.  Run: python tests/data/derive_truth.py CORPUS_DIR
"""

import hashlib
import json
import lzma
import pathlib
import sys

MIB = 1 << 20
WINDOW = (0xA0000, 0x100000)


def chunk_digests(data: bytes) -> list[str]:
    buf = bytearray(data)
    buf[WINDOW[0] : WINDOW[1]] = bytes(WINDOW[1] - WINDOW[0])
    return [hashlib.sha256(buf[i : i + MIB]).hexdigest() for i in range(0, len(buf), MIB)]


def main(corpus: pathlib.Path) -> None:
    out_dir = pathlib.Path(__file__).parent / "live"
    for pmem in sorted((corpus / "live").glob("*.pmem.xz")):
        name = pmem.name.removesuffix(".pmem.xz")
        data = lzma.decompress(pmem.read_bytes())
        doc = {
            "source": f"corpus/live/{pmem.name}",
            "chunk_size": MIB,
            "zeroed": [WINDOW[0], WINDOW[1]],
            "size": len(data),
            "sha256": chunk_digests(data),
        }
        (out_dir / f"{name}.pmem-sha256.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
