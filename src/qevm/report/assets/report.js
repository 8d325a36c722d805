/* qevm report: views, hover and zoom of the RAM map; filtering device sections.
   Strings from the stream reach the page only through textContent, never as markup.
   Addresses are BigInt: guest-physical addresses do not fit JavaScript numbers. */
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  function $(s, r) { return (r || document).querySelector(s); }
  function $$(s, r) { return Array.prototype.slice.call((r || document).querySelectorAll(s)); }
  function hex(v, pad) {
    var s = BigInt(v).toString(16);
    return "0x" + (pad ? s.padStart(pad, "0") : s);
  }
  function human(n) {
    n = Number(n);
    var units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"], i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? (Math.round(n * 10) / 10) : n) + " " + units[i];
  }
  function bytes(b64) {
    var bin = atob(b64), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  /* {"raw": base64} or {"rle": base64 of (value, length - 1) pairs} */
  function unpack(p) {
    if (p.raw !== undefined) return bytes(p.raw);
    var pairs = bytes(p.rle), n = 0, i, j;
    for (i = 1; i < pairs.length; i += 2) n += pairs[i] + 1;
    var out = new Uint8Array(n), at = 0;
    for (i = 0; i < pairs.length; i += 2) {
      for (j = 0; j <= pairs[i + 1]; j++) out[at++] = pairs[i];
    }
    return out;
  }
  function el(ns, name, attrs, text) {
    var e = ns ? document.createElementNS(ns, name) : document.createElement(name);
    for (var k in attrs) if (attrs[k] !== undefined) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  var island = $("#map-data"), svg = $("#ram-map");
  var D = island ? JSON.parse(island.textContent) : null;
  var tip = $("#tip");

  function showTip(ev, lines) {
    if (!tip) return;
    tip.textContent = "";
    lines.forEach(function (line, i) {
      tip.appendChild(i ? document.createTextNode(line) : el(null, "b", {}, line));
      tip.appendChild(document.createElement("br"));
    });
    tip.hidden = false;
    var x = ev.clientX + 14, y = ev.clientY + 14;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    if (x + w > window.innerWidth - 4) x = Math.max(4, ev.clientX - w - 14);
    if (y + h > window.innerHeight - 4) y = Math.max(4, ev.clientY - h - 14);
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  function hideTip() { if (tip) tip.hidden = true; }

  if (D && svg) {
    var cell = BigInt(D.cell), fine = BigInt(D.fine), cols = D.columns, K = D.kinds.length;
    var G = D.geometry, fineCells = unpack(D.fineCells), fineRounds = unpack(D.fineRounds);
    var segGroups = $$("g.seg", svg);
    /* the cell a rect of the map draws, from its place (undefined for anything else) */
    var cellOf = function (r) {
      if (!r || r.tagName !== "rect" || !r.parentNode) return undefined;
      var s = segGroups.indexOf(r.parentNode);
      if (s < 0) return undefined;
      var seg = D.segments[s];
      var row = Math.round((Number(r.getAttribute("y")) - seg.y) / G.pitch);
      var col = Math.round((Number(r.getAttribute("x")) - G.labels) / G.pitch);
      return seg.firstCell + row * cols + col;
    };
    var rectOf = function (c) {
      var s = segOf(c), seg = D.segments[s], k = c - seg.firstCell;
      var x = G.labels + (k % cols) * G.pitch, y = seg.y + Math.floor(k / cols) * G.pitch;
      return $$("rect", segGroups[s]).filter(function (r) {
        return Number(r.getAttribute("x")) === x && Number(r.getAttribute("y")) === y;
      })[0];
    };

    var segOf = function (c) {
      var segs = D.segments, lo = 0, hi = segs.length - 1;
      while (lo < hi) {
        var mid = (lo + hi + 1) >> 1;
        if (segs[mid].firstCell <= c) lo = mid; else hi = mid - 1;
      }
      return lo;
    };
    var spaceName = function (seg) { return seg.space === "gpa" ? "guest-physical" : "block " + seg.block; };
    var backing = function (s, lo, hi) {
      var out = [];
      D.ranges.forEach(function (r) {
        if (r.seg !== s) return;
        var a = BigInt(r.addr), e = a + BigInt(r.size);
        if (a < hi && e > lo) {
          var from = lo > a ? lo : a;
          out.push(r.block + " +" + hex(BigInt(r.offset) + from - a) + " (" + r.kind + ")");
        }
      });
      if (D.segments[s].space === "gpa") {
        D.mmio.forEach(function (m) {
          var a = BigInt(m.addr), e = a + (m.size ? BigInt(m.size) : BigInt(D.pageSize));
          if (a < hi && e > lo) out.push(m.label + " at " + hex(a) + (m.size ? " (" + human(BigInt(m.size)) + ")" : " (size not in the stream)"));
        });
      }
      return out;
    };
    var roundText = function (latest) {
      if (!latest) return null;
      var r = latest - 1, name = D.roundLabels[r];
      return "last written in round " + r + (name ? " (" + name + ")" : "") +
        "; rounds 0\u2013" + (D.rounds - 1);
    };
    var cellLines = function (c) {
      var s = segOf(c), seg = D.segments[s];
      var lo = BigInt(seg.base) + BigInt(c - seg.firstCell) * cell, hi = lo + cell;
      var lines = [spaceName(seg) + " " + hex(lo, 16) + " \u2013 " + hex(hi - 1n, 16)];
      backing(s, lo, hi).forEach(function (b) { lines.push(b); });
      var parts = [];
      for (var k = 1; k < K; k++) {
        var n = D.counts[c * K + k];
        if (n) parts.push(n + " " + D.kinds[k]);
      }
      lines.push(parts.length ? "pages: " + parts.join(", ") : "nothing mapped");
      var rt = roundText(D.latest[c]);
      if (rt) lines.push(rt);
      if (D.changed && D.changed[c]) {
        lines.push(D.changed[c] === 1 ? "1 page differs" : D.changed[c] + " pages differ");
      }
      return lines;
    };
    var fineLines = function (s, f) {
      var seg = D.segments[s];
      var lo = BigInt(seg.base) + BigInt(f - seg.firstCell * D.zoom) * fine, hi = lo + fine;
      var b = fineCells[f], kind = b & 15, level = ((b >> 4) & 3) + 1;
      var lines = [spaceName(seg) + " " + hex(lo, 16) + " \u2013 " + hex(hi - 1n, 16)];
      backing(s, lo, hi).forEach(function (x) { lines.push(x); });
      var share = ["", "up to a quarter", "up to half", "up to three quarters", "more than three quarters"];
      var what = D.kindText[kind];
      if (kind >= 3 && kind <= 6 && fine > BigInt(D.pageSize)) {
        what += " (in " + share[level] + " of its pages)";
      }
      lines.push(what);
      if (fineRounds[f]) {
        var bk = D.buckets[fineRounds[f] - 1];
        lines.push("last written in round " + (bk[0] === bk[1] ? bk[0] : bk[0] + "\u2013" + bk[1]) +
          (bk[0] === bk[1] && D.roundLabels[bk[0]] ? " (" + D.roundLabels[bk[0]] + ")" : ""));
      }
      if (b & 128) lines.push("differs in the compared input");
      return lines;
    };

    svg.addEventListener("mousemove", function (ev) {
      var c = cellOf(ev.target);
      if (c === undefined) { hideTip(); return; }
      showTip(ev, cellLines(c));
    });
    svg.addEventListener("mouseleave", hideTip);

    /* zoom: one row of cells, each cell a row of its fine cells */
    var zoomBox = $("#zoom"), select = $("#map-select");
    var zoomRow = function (c) {
      var s = segOf(c), seg = D.segments[s];
      var row = Math.floor((c - seg.firstCell) / cols), first = seg.firstCell + row * cols;
      var base = BigInt(seg.base) + BigInt(row * cols) * cell;
      select.setAttribute("x", G.labels - 2);
      select.setAttribute("y", seg.y + row * G.pitch - 2);
      select.setAttribute("width", cols * G.pitch + 2);
      select.setAttribute("height", G.pitch + 3);
      zoomBox.textContent = "";
      var head = el(null, "div", { "class": "zoom-head" });
      head.appendChild(el(null, "strong", {}, spaceName(seg) + " " + hex(base, 16) + " \u2013 " +
        hex(base + BigInt(cols) * cell - 1n, 16)));
      var close = el(null, "button", { type: "button" }, "close");
      close.addEventListener("click", function () { zoomBox.hidden = true; select.setAttribute("width", 0); });
      head.appendChild(close);
      zoomBox.appendChild(head);
      zoomBox.appendChild(el(null, "div", { "class": "muted" }, "each line is one cell of the map (" +
        human(cell) + "), each square " + human(fine)));
      var w = G.labels + D.zoom * G.pitch + 4, h = cols * G.pitch + 4;
      var z = el(SVGNS, "svg", { id: "zoom-map", width: w, height: h, viewBox: "0 0 " + w + " " + h,
        "class": svg.getAttribute("class").replace("ram-map", "ram-map zoom-map") });
      for (var i = 0; i < cols; i++) {
        var y = i * G.pitch;
        var t = el(SVGNS, "text", { "class": "row-addr", x: G.labels - 8, y: y + 9 },
          (seg.space === "gpa" ? "" : "+") + hex(base + BigInt(i) * cell, 16));
        z.appendChild(t);
        for (var j = 0; j < D.zoom; j++) {
          var f = (first + i) * D.zoom + j, b = fineCells[f], cls = "c" + (b & 15);
          var level = ((b >> 4) & 3) + 1;
          if (level < 4) cls += " l" + level;
          if (fineRounds[f]) cls += " r" + (fineRounds[f] - 1);
          if (b & 128) cls += " d";
          var r = el(SVGNS, "rect", { "class": cls, x: G.labels + j * G.pitch, y: y,
            width: G.cell, height: G.cell, "data-f": f });
          z.appendChild(r);
        }
      }
      z.addEventListener("mousemove", function (ev) {
        var f = ev.target.getAttribute && ev.target.getAttribute("data-f");
        if (f === null || f === undefined) { hideTip(); return; }
        showTip(ev, fineLines(s, Number(f)));
      });
      z.addEventListener("mouseleave", hideTip);
      zoomBox.appendChild(z);
      zoomBox.hidden = false;
      zoomBox.setAttribute("data-base", hex(base));
    };
    svg.addEventListener("click", function (ev) {
      var c = cellOf(ev.target);
      if (c !== undefined) zoomRow(c);
    });

    /* views */
    var setView = function (v) {
      svg.classList.remove("m-kind", "m-round", "m-diff");
      svg.classList.add("m-" + v);
      var z = $("#zoom-map");
      if (z) { z.classList.remove("m-kind", "m-round", "m-diff"); z.classList.add("m-" + v); }
      $$(".kind-legend").forEach(function (e) { e.hidden = v !== "kind"; });
      $$(".rounds-legend").forEach(function (e) { e.hidden = v !== "round"; });
      $$(".diff-legend").forEach(function (e) { e.hidden = v !== "diff"; });
      $$("#map-views input").forEach(function (i) { i.checked = i.value === v; });
    };
    $$("#map-views input").forEach(function (i) {
      i.addEventListener("change", function () { if (i.checked) setView(i.value); });
    });
    setView(D.changed ? "diff" : "kind");

    /* an address: from the form, or #addr=0x... in the page's address */
    var cellAt = function (addr) {
      for (var s = 0; s < D.segments.length; s++) {
        var seg = D.segments[s];
        if (seg.space !== "gpa") continue;
        var base = BigInt(seg.base), end = base + BigInt(seg.rows * cols) * cell;
        if (addr >= base && addr < end) return seg.firstCell + Number((addr - base) / cell);
      }
      return null;
    };
    var gotoAddr = function (text) {
      var addr;
      try { addr = BigInt(text.trim()); } catch (e) { return false; }
      var c = cellAt(addr);
      if (c === null) return false;
      zoomRow(c);
      var r = rectOf(c);
      if (r) r.scrollIntoView({ block: "center" });
      return true;
    };
    var form = $("#map-goto");
    if (form) form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var input = $("#goto-addr");
      input.setCustomValidity(gotoAddr(input.value) ? "" : "not in a drawn guest-physical range");
      input.reportValidity();
    });
    /* #view=kind|round|diff and #addr=0x... (joined by &) */
    var fromHash = function () {
      location.hash.slice(1).split("&").forEach(function (item) {
        var kv = item.split("=");
        if (kv[0] === "view" && /^(kind|round|diff)$/.test(kv[1] || "") &&
            $("#map-views input[value='" + kv[1] + "']")) setView(kv[1]);
        if (kv[0] === "addr" && /^(0x[0-9a-fA-F]+|[0-9]+)$/.test(kv[1] || "")) gotoAddr(kv[1]);
      });
    };
    window.addEventListener("hashchange", fromHash);
    fromHash();
  }

  /* device sections: filter by name, open or close all */
  var filter = $("#dev-filter");
  if (filter) filter.addEventListener("input", function () {
    var q = filter.value.toLowerCase();
    $$("details.dev").forEach(function (d) {
      d.hidden = q && d.getAttribute("data-name").toLowerCase().indexOf(q) < 0;
    });
  });
  var all = function (open) { $$("details.dev").forEach(function (d) { if (!d.hidden) d.open = open; }); };
  var b1 = $("#dev-open"), b2 = $("#dev-close");
  if (b1) b1.addEventListener("click", function () { all(true); });
  if (b2) b2.addEventListener("click", function () { all(false); });
  /* a link to a section opens it */
  var openTarget = function () {
    var id = location.hash.slice(1);
    if (!/^(dev|cpu)-\d+$/.test(id)) return;
    var d = document.getElementById(id);
    if (d && d.tagName === "DETAILS") d.open = true;
  };
  window.addEventListener("hashchange", openTarget);
  openTarget();
  document.documentElement.setAttribute("data-ready", "1");
})();
