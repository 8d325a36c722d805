"""A virtio device as text."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

from . import features

if TYPE_CHECKING:
    from . import VirtioDevice


def _names(names: list[str], prefix: str) -> list[str]:
    text = " ".join(names) or "(none)"
    return textwrap.wrap(text, 96, initial_indent=prefix, subsequent_indent=" " * len(prefix))


def _opt(v: int | None, fmt: str = "") -> str:
    return "-" if v is None else format(v, fmt)


def format_device(v: VirtioDevice) -> list[str]:
    where = f"PCI {v.pci_address}" if v.pci_address else v.transport
    lines = [f"{v.type}  {v.section}  ({where}, virtio device id {_opt(v.device_id)})"]
    names, unknown = features.decode_status(v.status)
    status = " ".join(n.removeprefix("VIRTIO_CONFIG_S_") for n in names) or "(reset)"
    if unknown:
        status += f" unknown({unknown:#x})"
    lines.append(f"  status          {status} ({v.status:#04x})")
    flags = " ".join(k for k, on in v.flags.items() if on)
    lines.append(
        f"  isr {v.isr:#04x}  queue_sel {v.queue_sel}  config vector {_opt(v.config_vector)}"
        f"  endianness {v.endianness}" + (f"  {flags}" if flags else "")
    )
    g = v.guest_feature_list
    lines += _names(g.names, f"  guest features  ({v.guest_features:#x}) ")
    if g.unknown:
        lines.append(f"                  unknown-features({g.unknown:#018x})")
    h = v.host_feature_list
    extra = [n for n in h.names if n not in g.names]
    lines.append(
        "  host features   not migrated; the stream proves the negotiated ones"
        + (f" and {' '.join(extra)}" if extra else "")
    )
    lines.append(
        "  queue   num  default  desc               avail              used"
        "               last_avail  used_idx  avail_idx  inuse  vector"
    )
    idle: list = []

    def flush() -> None:
        if idle:
            span = f"{idle[0].index}-{idle[-1].index}" if len(idle) > 1 else f"{idle[0].index}"
            lines.append(
                f"  {span:>5} {idle[0].num:5} {idle[0].num_default:8}  (not set up)"
                f"{'':56} {_opt(idle[0].vector):>7}"
            )
            idle.clear()

    for q in v.queues:
        unused = not q.desc and not q.last_avail_idx and not q.ring.problem
        if unused and (
            not idle
            or (idle[-1].num, idle[-1].num_default, idle[-1].vector)
            == (q.num, q.num_default, q.vector)
        ):
            idle.append(q)
            continue
        flush()
        if unused:
            idle.append(q)
            continue
        lines.append(
            f"  {q.index:5} {q.num:5} {q.num_default:8}  {q.desc:#018x}"
            f" {_opt(q.avail, '#018x'):>18}"
            f" {_opt(q.used, '#018x'):>18} {q.last_avail_idx:11} {_opt(q.used_idx):>9}"
            f" {_opt(q.ring.avail_idx):>10} {_opt(q.ring.inuse):>6} {_opt(q.vector):>7}"
        )
        if q.ring.problem:
            lines.append(f"        {'error' if q.ring.fatal else 'warning'}: {q.ring.problem}")
        elif q.ring.note and q.desc:
            lines.append(f"        note: {q.ring.note}")
    flush()
    lines += _device_lines(v.device)
    for n in v.notes:
        lines.append(f"  note: {n}")
    return lines


def _device_lines(dev: dict[str, Any]) -> list[str]:
    out = []
    st = dev.get("state")
    if st and "mac" in st:
        pairs = f"{st.get('curr_queue_pairs', '?')}/{st.get('max_queue_pairs', '?')}"
        out.append(
            f"  mac {st['mac']}  link {'up' if st.get('link_up') else 'down'}"
            f"  queue pairs {pairs}  promisc {st.get('promisc', '-')}"
            f"  allmulti {st.get('allmulti', '-')}"
        )
        if st.get("mac_table"):
            out.append(f"  mac filter      {' '.join(st['mac_table'])}")
    cfg = dev.get("config")
    if cfg:
        text = ", ".join(f"{k} {v}" for k, v in cfg.items() if not isinstance(v, bool))
        out += textwrap.wrap(
            text, 96, initial_indent="  config          ", subsequent_indent=" " * 18
        )
    return out
