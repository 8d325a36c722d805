"""``qevm report`` as a person sees it: each page rendered by headless Chromium.

Chromium loads the page from disk, runs its script, and gives the DOM and a
screenshot (one browser run per page, pages made once per session).  What
the page shows is checked against QEMU's own account of the same VM:
``info ramblock``, ``info mtree -f``, ``info registers``, ``info pci``, the
bytes its ``-device loader`` put in RAM, the pages its two memory dumps
differ in, and the error a destination QEMU printed (tests/data/streams,
tests/data/diff, tests/data/check and the corpus' Linux guests).
"""

from __future__ import annotations

import json
import lzma
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
from html.parser import HTMLParser

import numpy as np
import pytest
from conftest import CORPUS, DATA, HAVE_CORPUS, STREAMS, meta, unpack
from monitor import parse_info_pci
from mtree import loaded_patterns, system_ranges
from test_diff import parse_info_registers

import qevm
from qevm.analysis import check
from qevm.analysis.diff import diff_opened
from qevm.report import report_html, write_report
from qevm.report.ramgrid import KINDS, MapGrid, Segment, changed_per_fine_cell
from qevm.sections.ram.index import ENCODINGS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's)"
)
WIDTH = 1280

# -- the DOM as Chromium left it ------------------------------------------------------

_VOID = {"meta", "link", "br", "hr", "img", "input", "col", "wbr", "area", "base", "source"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def own_text(self) -> str:
        """The text directly in this element (not in its children)."""
        return "".join(c for c in self.children if isinstance(c, str))

    def walk(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.walk()

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        want = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
        return [
            n
            for n in self.walk()
            if (tag is None or n.tag == tag)
            and all(
                (n.attrs.get(k) is not None) if v is True else n.attrs.get(k) == v
                for k, v in want.items()
            )
        ]

    def find(self, tag: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag} {attrs}>"
        return found[0]

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#document", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in _VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


class Page:
    """A report as Chromium rendered it."""

    def __init__(self, html: pathlib.Path, dom: str, png: pathlib.Path) -> None:
        self.html, self.png = html, png
        b = _Builder()
        b.feed(dom)
        self.dom = b.root
        self.map = json.loads(self.dom.find("script", id="map-data").text())

    def rows(self, table_id: str) -> list[list[str]]:
        table = self.dom.find("table", id=table_id)
        return [[td.text().strip() for td in tr.find_all("td")] for tr in table.find_all("tr")][1:]

    def registers(self, cpu: int) -> dict[str, int]:
        box = self.dom.find("details", data_cpu=str(cpu))
        out = {}
        for tr in box.find_all("tr", data_reg=True):
            value = tr.find("code").text()
            if re.fullmatch(r"-?0x[0-9a-f]+", value):
                out[tr.attrs["data-reg"]] = int(value, 16)
        return out

    def cell_rect(self, addr: int) -> Node:
        """The map's rect for guest-physical ``addr``, found from the drawn geometry."""
        cell, cols = int(self.map["cell"], 16), self.map["columns"]
        g = self.map["geometry"]
        groups = self.dom.find("svg", id="ram-map").find_all("g", class_="seg")
        for seg, group in zip(self.map["segments"], groups):
            base = int(seg["base"], 16)
            if seg["space"] == "gpa" and base <= addr < base + seg["rows"] * cols * cell:
                k = (addr - base) // cell
                x, y = g["labels"] + (k % cols) * g["pitch"], seg["y"] + (k // cols) * g["pitch"]
                for r in group.find_all("rect"):
                    if int(r.attrs["x"]) == x and int(r.attrs["y"]) == y:
                        return r
        raise AssertionError(f"no cell drawn at {addr:#x}")

    def gpa_rects(self) -> list[tuple[int, Node]]:
        """``(address, rect)`` of every drawn guest-physical cell."""
        cell, cols = int(self.map["cell"], 16), self.map["columns"]
        g = self.map["geometry"]
        groups = self.dom.find("svg", id="ram-map").find_all("g", class_="seg")
        out = []
        for seg, group in zip(self.map["segments"], groups):
            if seg["space"] != "gpa":
                continue
            base = int(seg["base"], 16)
            for r in group.find_all("rect"):
                col = (int(r.attrs["x"]) - g["labels"]) // g["pitch"]
                row = (int(r.attrs["y"]) - seg["y"]) // g["pitch"]
                out.append((base + (row * cols + col) * cell, r))
        return out


def render(html: pathlib.Path, fragment: str = "") -> Page:
    """One Chromium run: the DOM after the page's script ran, and a screenshot."""
    png = html.with_suffix(".png")
    profile = html.with_suffix(".profile")
    res = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},1600",
            f"--screenshot={png}",
            "--dump-dom",
            html.as_uri() + fragment,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    shutil.rmtree(profile, ignore_errors=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return Page(html, res.stdout, png)


#: Hovers over the first cell with changed pages, clicks it, hovers over its first changed
#: page in the zoomed row, and writes what the tooltip said each time into the page.
_HOVER_AND_ZOOM = """<script>
window.addEventListener("load", function () {
  function at(r) { var b = r.getBoundingClientRect(); return {bubbles: true, clientX: b.x + 2,
    clientY: b.y + 2}; }
  function hover(r) { r.dispatchEvent(new MouseEvent("mousemove", at(r)));
    return document.getElementById("tip").innerText; }
  var cell = document.querySelector("#ram-map g.seg rect.d");
  var out = [hover(cell)];
  cell.dispatchEvent(new MouseEvent("click", at(cell)));
  out.push(hover(document.querySelector("#zoom-map rect.d")));
  var pre = document.createElement("pre"); pre.id = "probe";
  pre.textContent = out.join("\\n----\\n"); document.body.appendChild(pre);
});
</script>"""


def hover_and_zoom(page: Page) -> list[str]:
    """A person's mouse on the page: a copy of it with a probe script (its policy lets
    no other script run, so the copy leaves the policy out)."""
    text = page.html.read_text()
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", text)
    probe = page.html.with_name(page.html.stem + "-probe.html")
    probe.write_text(text.replace("</body>", _HOVER_AND_ZOOM + "</body>"))
    found = render(probe).dom.find("pre", id="probe").text()
    return found.split("\n----\n")


_PAGES: dict[str, Page] = {}


@pytest.fixture(scope="session")
def pages(tmp_path_factory):
    """``get(name, make)``: the page ``make(path)`` writes, rendered once per session."""
    folder = tmp_path_factory.mktemp("report")

    def get(name, make, fragment=""):  # fragment: e.g. #addr=0x... (zooms in)
        if name not in _PAGES:
            html = folder / f"{name}.html"
            make(html)
            _PAGES[name] = render(html, fragment)
        return _PAGES[name]

    return get


def _report(path, html, **kw):
    with qevm.open(path, index_ram=True, track_rounds=True, strict=False) as mig:
        extra = {}
        if "diff" in kw:
            extra["diff"] = diff_opened(mig, kw["diff"])
        if "against" in kw:
            extra["check"] = check(mig, kw["against"])
        return write_report(mig, html, **extra)


def _common(page: Page) -> None:
    """What every page has: its script ran, the map, a screenshot."""
    assert page.dom.find("html").attrs.get("data-ready") == "1"
    assert page.dom.find("svg", id="ram-map").find_all("rect")
    png = page.png.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == WIDTH
    assert len(png) > 20000  # not a blank page
    # nothing is fetched: no external resource anywhere in the page
    src = page.html.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", src)
    assert len(page.dom.find_all("script")) == 2  # the data island and the page's own script


def _region(block: str) -> str:
    """The memory region name ``info mtree`` shows for a RAM block."""
    return block.rsplit("/", 1)[-1] if re.match(r"[0-9a-f]{4}:", block) else block


def _joined(ranges):
    out: list[tuple[int, int, str, int]] = []
    for s, e, n, o in sorted(ranges):
        if out and out[-1][1] == s and out[-1][2] == n and out[-1][3] + s - out[-1][0] == o:
            out[-1] = (out[-1][0], e, n, out[-1][3])
        else:
            out.append((s, e, n, o))
    return out


def _ramblocks(text: str) -> dict[str, int]:
    """``info ramblock``: block name -> used length."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"\s*(\S+)\s+\d+ [KMG]iB\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+0x[0-9a-f]+", line)
        if m:
            out[m[1]] = int(m[2], 16)
    return out


def _check_blocks_and_map(page: Page, ramblock: str, mtree: str) -> None:
    blocks = {r[0]: int(r[1].split()[0], 16) for r in page.rows("ram-blocks")}
    assert blocks == _ramblocks(ramblock)
    drawn = [
        (
            int(r["addr"], 16),
            int(r["addr"], 16) + int(r["size"], 16),
            _region(r["block"]),
            int(r["offset"], 16),
        )
        for r in page.map["ranges"]
        if page.map["segments"][r["seg"]]["space"] == "gpa"
    ]
    truth = [(s, e + 1, n, o) for s, e, n, o in system_ranges(mtree)]
    assert _joined(drawn) == _joined(truth)
    # every block is named on the map, mapped or not
    svg = page.dom.find("svg", id="ram-map")
    assert {t.own_text() for t in svg.find_all("text", class_="block-label")} == set(blocks)


def _check_registers(page: Page, cpu: int, info_registers: str) -> None:
    truth = parse_info_registers(info_registers)
    ours = page.registers(cpu)
    seg_mask = 0x00FFFF00  # info registers masks segment flags
    for name, value in truth.items():
        if name.endswith(".flags"):
            assert ours[name] & seg_mask == value & seg_mask, name
        else:
            assert ours[name] == value, name
    assert {"rip", "rsp", "cr3", "cs.selector"} <= set(truth)


def _cpu_blocks(info_registers: str) -> list[str]:
    return re.split(r"(?m)^\s*CPU#\d+\s*$", info_registers.replace("\r", ""))[1:]


# -- a plain stream (committed) -------------------------------------------------------

PLAIN = "pc-devices-7.2"


@needs_browser
def test_plain_stream(pages):
    path = STREAMS[PLAIN]
    recipe = meta(path)
    page = pages(PLAIN, lambda html: _report(unpack(path), html), "#addr=0x1000000")
    _common(page)
    assert page.dom.find(id="machine").text().startswith("pc-i440fx-7.2")  # -M pc on QEMU 7.2
    _check_blocks_and_map(page, recipe["ramblocks"], recipe["mtree"])
    # what QEMU's -device loader put into RAM is drawn as data, cell by cell
    cell = int(page.map["cell"], 16)
    for name, gpa in loaded_patterns(recipe["argv"]):
        assert name == "pattern1m.bin"
        for addr in range(gpa, gpa + (1 << 20), cell):
            assert {"c3"} <= page.cell_rect(addr).classes() and not {"l1", "l2", "l3"} & (
                page.cell_rect(addr).classes()
            ), hex(addr)
    # #addr= zoomed into the row holding the pattern's start: page by page, all data
    zoom = page.dom.find("div", id="zoom")
    assert "hidden" not in zoom.attrs
    base, fine = int(zoom.attrs["data-base"], 16), int(page.map["fine"], 16)
    assert base <= 0x1000000 < base + 64 * cell
    g = page.map["geometry"]
    seen = 0
    for r in zoom.find("svg", id="zoom-map").find_all("rect"):
        line, col = int(r.attrs["y"]) // g["pitch"], (int(r.attrs["x"]) - g["labels"]) // g["pitch"]
        addr = base + line * cell + col * fine
        if 0x1000000 <= addr < 0x1100000:
            assert "c3" in r.classes() and not {"l1", "l2", "l3"} & r.classes(), hex(addr)
            seen += 1
    assert seen == min(0x100000, base + 64 * cell - 0x1000000) // fine
    regs = (path.parent / f"{PLAIN}.regs.txt").read_text()
    _check_registers(page, 0, regs)
    # every device section analyze-migration.py lists, by name and section id
    with lzma.open(DATA / "expected" / f"{PLAIN}.upstream-state.json.xz") as f:
        upstream = json.load(f)
    want = {tuple(re.fullmatch(r"(.*) \((\d+)\)", k).groups()) for k in upstream}
    shown = {
        (d.attrs["data-name"], d.attrs["id"].removeprefix("dev-"))
        for d in page.dom.find_all("details", class_="dev")
    }
    assert shown == {(n, i) for n, i in want if n != "ram"}


# -- a Linux guest with devices (corpus) ------------------------------------------------

LINUX_GUEST = CORPUS / "devices" / "lx-q35-111.mig.xz"


@needs_browser
@pytest.mark.skipif(not HAVE_CORPUS, reason="the shared corpus is not available")
def test_linux_guest_with_devices(pages):
    truth = json.loads(LINUX_GUEST.with_name("lx-q35-111.json").read_text())["truth"]
    page = pages("lx-q35-111", lambda html: _report(unpack(LINUX_GUEST), html))
    _common(page)
    assert page.dom.find(id="machine").text().startswith("pc-q35-11.1")
    _check_blocks_and_map(page, truth["info ramblock"], truth["info mtree -f"])
    for cpu, text in enumerate(_cpu_blocks(truth["info registers"])):
        _check_registers(page, cpu, text)
    # the PCI table: every function QEMU lists, with its ids and memory BARs
    rows = {r[0]: r for r in page.rows("pci-table")}
    pci = parse_info_pci(truth["info pci"])
    assert set(rows) == {f"{d['bus']:02x}:{d['slot']:02x}.{d['function']}" for d in pci}
    for d in pci:
        row = rows[f"{d['bus']:02x}:{d['slot']:02x}.{d['function']}"]
        assert row[2].startswith(f"{d['vendor']:04x}:{d['device']:04x}")
        for n, bar in d["bars"].items():
            if bar.get("address") is not None and bar.get("kind") != "io":
                assert f"BAR{n} " in row[5] and f"{bar['address']:#x}" in row[5], (row, bar)
    # every virtio device with its queues, and the device memory on the map
    virtio = page.dom.find_all("div", class_="virtio")
    assert len(virtio) == 4  # net, blk, rng, balloon
    mmio_cells = [a for a, r in page.gpa_rects() if "c8" in r.classes()]
    assert mmio_cells and all(0xFE000000 <= a < 0xFF000000 for a in mmio_cells)


# -- a diff of two saves ----------------------------------------------------------------


def _check_diff(page: Page, truth_pages: list[list[int]], limit: int | None) -> None:
    ranges = [
        [int(r[0], 16), int(r[1], 16) + 1]
        for r in page.rows("changed-ranges")
        if limit is None or int(r[0], 16) < limit
    ]
    assert ranges == truth_pages
    # on the map: exactly the cells that hold a changed page are marked
    cell = int(page.map["cell"], 16)
    want = {
        lo // cell * cell + k * cell
        for lo, hi in truth_pages
        for k in range((hi - 1) // cell - lo // cell + 1)
    }
    marked = {a for a, r in page.gpa_rects() if "d" in r.classes() and (limit is None or a < limit)}
    assert marked == want
    assert "m-diff" in page.dom.find("svg", id="ram-map").classes()


def _changed_registers(page: Page) -> dict[str, int]:
    out = {}
    for r in page.rows("changed-registers"):
        if r[0] == "0" and re.fullmatch(r"-?0x[0-9a-f]+", r[3]):
            out[r[1]] = int(r[3], 16)
    return out


def _check_registers_changed(page: Page, before: str, after: str) -> None:
    a, b = parse_info_registers(before), parse_info_registers(after)
    seg_mask = 0x00FFFF00
    ours = _changed_registers(page)
    for name in a:
        if a[name] != b.get(name):
            got = ours[name]
            assert (got & seg_mask if name.endswith(".flags") else got) == (
                b[name] & seg_mask if name.endswith(".flags") else b[name]
            ), name
        elif name in ours and not name.endswith(".flags"):
            raise AssertionError(f"{name} shown as changed")


@needs_browser
def test_diff_of_two_saves(pages):
    base = DATA / "diff" / "bios-run-72"
    truth = json.loads(base.with_suffix(".json").read_text())
    a = unpack(base.with_name("bios-run-72.a.mig.xz"))
    b = unpack(base.with_name("bios-run-72.b.mig.xz"))
    page = pages("bios-run-72", lambda html: _report(a, html, diff=b))
    _common(page)
    _check_diff(page, truth["diff_pages"], truth["pmem"][1])
    _check_registers_changed(page, truth["truth_a"], truth["truth_b"])
    assert page.dom.find(id="diff-verdict").text().endswith("differ")
    # hover the first changed cell: its range, and as many changed pages as QEMU's dumps
    cell_tip, page_tip = hover_and_zoom(page)
    lo, hi = (int(x, 16) for x in re.findall(r"0x[0-9a-f]{16}", cell_tip.splitlines()[0]))
    pages_in = sum(max(0, min(hi + 1, b) - max(lo, a)) // 4096 for a, b in truth["diff_pages"])
    first = min(a for a, _ in truth["diff_pages"])
    assert lo <= first <= hi
    said = re.search(r"(\d+) pages? differs?", cell_tip)
    assert said and int(said[1]) == pages_in, cell_tip
    # and, zoomed in, the first changed page itself
    plo, phi = (int(x, 16) for x in re.findall(r"0x[0-9a-f]{16}", page_tip.splitlines()[0]))
    assert plo <= first <= phi and phi - plo + 1 == int(page.map["fine"], 16)
    assert "differs in the compared input" in page_tip


@needs_browser
@pytest.mark.skipif(not HAVE_CORPUS, reason="the shared corpus is not available")
def test_diff_of_a_linux_guest_saved_twice(pages):
    base = CORPUS / "diff" / "lx-diff-100"
    truth = json.loads(base.with_suffix(".json").read_text())
    a = unpack(base.with_name("lx-diff-100.mig.xz"))
    b = unpack(base.with_name("lx-diff-100.b.mig.xz"))
    page = pages("lx-diff-100", lambda html: _report(a, html, diff=b))
    _common(page)
    _check_diff(page, truth["diff_pages"], None)
    _check_registers_changed(
        page, truth["truth"]["info registers"], truth["truth_b"]["info registers"]
    )


# -- --against DEST ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    with tarfile.open(DATA / "check" / "pairs.tar.xz") as tar:
        names = [
            m for m in tar.getmembers() if m.name.split(".")[0] in ("slots-2-to-0", "alias-pc")
        ]
        tar.extractall(out, members=names, filter="data")
    return out


@needs_browser
@pytest.mark.parametrize("pair", ["slots-2-to-0", "alias-pc"])
def test_check_verdict(pages, pairs, pair):
    verdict = json.loads((pairs / f"{pair}.verdict.json").read_text())
    src, dst = pairs / f"{pair}.src.mig", pairs / f"{pair}.dst.mig"
    page = pages(f"check-{pair}", lambda html: _report(src, html, against=dst))
    banner = page.dom.find(id="check-verdict")
    assert banner.attrs["data-loads"] == str(verdict["loads"])
    if verdict["loads"]:
        assert banner.text().startswith("loads")
        return
    assert banner.text().startswith("does not load")
    first = page.dom.find("ol", id="check-problems").find("li", class_="problem")
    qemu = first.find("div", class_="qemu").text().removeprefix("QEMU: ")
    errors = [e.split(": ", 1)[1] for e in verdict["qemu_errors"] if "warning" not in e]
    assert qemu == errors[0]


# -- hostile names ----------------------------------------------------------------------


def _hostile_stream(tmp_path: pathlib.Path) -> pathlib.Path:
    """pc-devices-7.2 with a section, a field and a RAM block renamed to markup (same
    lengths, so the framing and the description stay valid)."""
    data = bytearray(unpack(STREAMS[PLAIN]).read_bytes())
    # the section's idstr (length-prefixed) and its names in the description
    data = data.replace(b"\x06port92", b"\x06</svg>")
    data = data.replace(b'"port92"', b'"</svg>"')
    data = data.replace(b'"name": "outport"', b'"name": "<script"')
    # the RAM block's name wherever a record names it (length-prefixed)
    data = data.replace(b"\x06pc.rom", b'\x06"><b>x')
    out = tmp_path / "hostile.mig"
    out.write_bytes(bytes(data))
    return out


@needs_browser
def test_hostile_names_stay_text(pages, tmp_path_factory):
    path = _hostile_stream(tmp_path_factory.mktemp("hostile"))

    def make(html):
        res = subprocess.run(
            [sys.executable, "-m", "qevm", "report", str(path), "-o", str(html)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr

    page = pages("hostile", make)
    _common(page)
    assert not page.dom.find_all("b")  # no element came from a name
    assert len(page.dom.find_all("svg", id="ram-map")) == 1
    shown = {d.attrs["data-name"] for d in page.dom.find_all("details", class_="dev")}
    assert "</svg>" in shown
    assert any(r[0] == '"><b>x' for r in page.rows("ram-blocks"))
    fields = page.dom.find("details", data_name="</svg>").find_all("th")
    assert "<script" in {th.text() for th in fields}


# -- without a browser: the numbers behind the map --------------------------------------


@pytest.mark.parametrize("name", ["q35-compress-7.2", "q35-ignore-shared-7.2", PLAIN])
def test_page_kinds_match_the_index_counts(name):
    with qevm.open(unpack(STREAMS[name]), index_ram=True, decode_devices=False) as mig:
        index = mig.page_index
        for b in mig.ram_blocks:
            if b.name not in index.loc:
                continue
            n = index.loc[b.name].npages
            kinds = np.bincount(index.kinds(b.name, 0, n), minlength=len(ENCODINGS))
            assert dict(zip(ENCODINGS, kinds.tolist())) == index.encoding_counts(b.name)
            assert index.rounds(b.name, 0, n) is None  # not tracked unless asked


def test_changed_pages_per_cell_against_a_plain_count():
    rng = np.random.default_rng(7)
    ps, fine, zoom = 4096, 4096 * 4, 16
    seg = Segment("gpa", 0x100000, 2, first_cell=0)
    cells = 2 * 64
    grid = MapGrid(
        ps,
        fine * zoom,
        fine,
        [seg],
        np.zeros((cells * zoom, len(KINDS))),
        np.zeros(cells * zoom, dtype=np.uint16),
    )
    pages = sorted(set(rng.integers(0, cells * zoom * 4, 300).tolist()))
    ranges = [(0x100000 + p * ps, ps) for p in pages]
    got = changed_per_fine_cell(grid, ranges, {})
    want = np.zeros(cells * zoom, dtype=np.int64)
    for p in pages:
        want[p // 4] += 1
    assert got.tolist() == want.tolist()


def test_cli_pipe_errors_and_refusals(tmp_path):
    path = unpack(STREAMS["q35-11.1"])

    def run(*args, stdin=None):
        return subprocess.run(
            [sys.executable, "-m", "qevm", "report", *args],
            capture_output=True,
            text=True,
            stdin=stdin,
            timeout=300,
        )

    with open(path, "rb") as f:  # from a pipe: copied to a file first
        res = run("-", "-o", str(tmp_path / "pipe.html"), stdin=f)
    assert res.returncode == 0, res.stderr
    assert 'id="ram-map"' in (tmp_path / "pipe.html").read_text()
    assert run(str(path), "-o", str(path)).returncode == 2  # would overwrite its input
    assert run(str(path), "-o", str(tmp_path / "x.html"), "--ignore", "timer").returncode == 1
    # a stream cut inside its device sections: the page shows what was read and the error
    cut = tmp_path / "cut.mig"
    data = path.read_bytes()
    with qevm.open(path, decode_devices=False) as mig:
        at = mig.devices()[len(mig.devices()) // 2].record.body_offset + 3
    cut.write_bytes(data[:at])
    res = run(str(cut), "-o", str(tmp_path / "cut.html"))
    assert res.returncode == 1, res.stderr
    html = (tmp_path / "cut.html").read_text()
    assert 'class="err"' in html and "ends inside" in html


def test_without_a_page_index_blocks_are_drawn_by_offset():
    path = unpack(STREAMS["q35-11.1"])
    with qevm.open(path, strict=False) as mig:
        html = report_html(mig)
        blocks = [b.name for b in mig.ram_blocks]
    assert "RAM was not indexed" in html
    for name in blocks:
        assert 'data-space="block" data-base="0x0" ' in html
        assert f'data-block="{name}"' in html
