"""Pictures of a run, as SVG written directly (no Graphviz: a sequence diagram is a grid of lanes
and rows, which needs exact placement rather than graph layout, and no new dependency).

- run_svg(trace, result): a sequence diagram of `result.timeline`. One lane for the host and
  one per vCPU; one row per step. Each vCPU lane is a band coloured by the model's mp_state
  after the step, labelled when it changes, with pending INIT/SIPI, the stored vector and
  CS:RIP under it; INIT, SIPI and other IPIs are arrows from the sender's lane (the host for an
  MSI, the vCPU whose guest wrote its ICR) to the vCPUs addressed; host ioctls are dashed
  arrows; a guest report is a note on its lane. Where KVM showed something else, the band is
  outlined red and KVM's value is written next to it.
- explore_svg(exploration): the outcome histogram of a concurrent block and, for each outcome,
  one shortest schedule that reaches it, as moves on thread lanes.

Both are generated from the data only; tests/report/test_svg.py parses them.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from .timeline import cs_rip, final_sentences, state_name, wrap

FONT = "font-family='DejaVu Sans Mono, Menlo, Consolas, monospace'"
STATE_COLOURS = {
    "RUNNABLE": "#4caf50",
    "UNINITIALIZED": "#bdbdbd",
    "INIT_RECEIVED": "#ffb300",
    "HALTED": "#42a5f5",
    "SIPI_RECEIVED": "#ab47bc",
}
OTHER_COLOUR = "#8d6e63"
SIGNAL_COLOURS = {"INIT": "#d84315", "SIPI": "#1565c0"}
MISMATCH = "#d50000"
CHAR = 6.7  # width of one character at font-size 11 (monospace), for layout


def _text(x, y, text, size=11, anchor="start", colour="#212121", weight="normal") -> str:
    return (
        f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' text-anchor='{anchor}' "
        f"fill='{colour}' font-weight='{weight}'>{escape(str(text))}</text>"
    )


def _fit(text: str, width: float, size: int = 11) -> str:
    most = max(4, int(width / (CHAR * size / 11)))
    return text if len(text) <= most else text[: most - 1] + "~"


def _svg(width: float, height: float, body: list[str], title: str) -> str:
    return "\n".join(
        [
            "<?xml version='1.0' encoding='UTF-8'?>",
            f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height:.0f}' "
            f"viewBox='0 0 {width:.0f} {height:.0f}' {FONT}>",
            f"<title>{escape(title)}</title>",
            "<defs>",
            *(
                f"<marker id='arrow-{name}' viewBox='0 0 10 10' refX='9' refY='5' "
                f"markerWidth='7' markerHeight='7' orient='auto-start-reverse'>"
                f"<path d='M0,0 L10,5 L0,10 z' fill='{colour}'/></marker>"
                for name, colour in (
                    ("init", SIGNAL_COLOURS["INIT"]),
                    ("sipi", SIGNAL_COLOURS["SIPI"]),
                    ("other", "#6a1b9a"),
                    ("ioctl", "#616161"),
                )
            ),
            "</defs>",
            f"<rect width='{width:.0f}' height='{height:.0f}' fill='white'/>",
            *body,
            "</svg>",
            "",
        ]
    )


# ----------------------------------------------------------------------------------------------
# A run as a sequence diagram

LEFT = 300  # the step column
LANE = 190  # distance between lanes
TOP = 78  # lane titles above
ROW = 80
BAND = 14


def _lane_x(lane: int) -> float:
    """Lane 0 is the host, lane v + 1 is vCPU v."""
    return LEFT + LANE * lane + LANE / 2


def _step_text(record) -> str:
    """The step in a few words: the decoded signal of an ICR write or MSI, else its YAML."""
    if record.signal is not None:
        how = "MSI" if record.signal.sender == "host" else f"{record.signal.sender} ICR"
        return f"{record.index + 1}. {how}: {record.signal.label}"
    step = " ".join(record.step.split())
    return f"{record.index + 1}. {step}"


def _ioctl_target(record) -> list[int]:
    """vCPUs a host step addresses, from the step's own YAML (observe, set_mp_state, ...)."""
    targets = sorted({v for v, _ in record.predicted if v is not None})
    return targets


def run_svg(trace, result) -> str:
    records = result.timeline
    nr = trace.setup.vcpus
    lanes = nr + 1
    width = LEFT + LANE * lanes + LANE
    sentences = [line for s in final_sentences(result) for line in wrap(s)]
    legend_y = TOP + ROW * max(len(records), 1) + 30
    height = legend_y + 70 + 16 * len(sentences) + 20
    body = [
        _text(12, 24, f"{trace.name}: {result.status.value.upper()}", 15, weight="bold"),
        _text(
            12,
            44,
            f"profile {result.profile}, backend {result.backend}; {nr} vCPUs, "
            f"{trace.setup.apic}, guest {trace.setup.guest}",
            11,
            colour="#555555",
        ),
    ]
    names = ["host"] + [f"vCPU {v}" + (" (BSP)" if v == 0 else "") for v in range(nr)]
    bottom = TOP + ROW * max(len(records), 1)
    for lane, name in enumerate(names):
        x = _lane_x(lane)
        body.append(_text(x, TOP - 12, name, 12, "middle", weight="bold"))
        body.append(
            f"<line x1='{x:.1f}' y1='{TOP - 6}' x2='{x:.1f}' y2='{bottom}' "
            "stroke='#9e9e9e' stroke-width='1' stroke-dasharray='2,3'/>"
        )
    previous = None
    for row, record in enumerate(records):
        y = TOP + ROW * row
        if row % 2:
            body.append(
                f"<rect x='0' y='{y}' width='{width}' height='{ROW}' fill='#f5f5f5' "
                "fill-opacity='0.6'/>"
            )
        body += _row_svg(record, previous, y)
        previous = record
    body += _legend(legend_y)
    y = legend_y + 62
    body.append(_text(12, y, "final state:", 12, weight="bold"))
    for line in sentences:
        y += 16
        body.append(_text(20, y, line, 11))
    return _svg(width, height, body, f"kvmtest show {trace.name}")


def _row_svg(record, previous, y: float) -> list[str]:
    out = []
    where = record.location.rsplit("/", 1)[-1]
    out.append(_text(12, y + 20, _fit(_step_text(record), LEFT - 24), 11, weight="bold"))
    out.append(_text(12, y + 36, where, 10, colour="#757575"))
    # state bands (drawn first: arrows go over them)
    for view in record.model:
        x = _lane_x(view.vcpu + 1)
        name = state_name(view.mp_state)
        colour = STATE_COLOURS.get(name, OTHER_COLOUR)
        differs = _kvm_differs(record, view.vcpu)
        stroke = f" stroke='{MISMATCH}' stroke-width='2.5'" if differs else ""
        out.append(
            f"<rect x='{x - BAND / 2:.1f}' y='{y}' width='{BAND}' height='{ROW}' "
            f"fill='{colour}'{stroke}><title>{escape(name)}</title></rect>"
        )
        before = previous.model[view.vcpu] if previous is not None else None
        changed = before is None or before != view
        tx = x + BAND / 2 + 5
        room = LANE - BAND - 6
        if changed:
            out.append(_text(tx, y + 40, _fit(name, room), 11, weight="bold"))
            details = f"pending {view.pending or '-'}, vec {view.sipi_vector:#04x}"
            out.append(_text(tx, y + 53, _fit(details, room, 10), 10, colour="#424242"))
            where = f"CS:RIP {cs_rip(view.cs_selector, view.rip)}"
            out.append(_text(tx, y + 65, _fit(where, room, 10), 10, colour="#424242"))
        report = record.predicted.get((view.vcpu, "report"))
        if report:
            out.append(_text(tx, y + 27, _fit(f"reports {report}", room, 10), 10, colour="#2e7d32"))
        if differs:
            out.append(_text(tx, y + 64, _fit("KVM: " + differs, room, 10), 10, colour=MISMATCH))
    # arrows
    signal = record.signal
    if signal is not None:
        sender = 0 if signal.sender == "host" else int(signal.sender[4:]) + 1
        kind = {"INIT": "init", "SIPI": "sipi"}.get(signal.mode, "other")
        colour = SIGNAL_COLOURS.get(signal.mode, "#6a1b9a")
        targets = signal.targets if signal.targets is not None else ()
        out += _arrows(sender, [t + 1 for t in targets], y + 12, colour, kind, signal.label)
        if signal.targets is None or not signal.targets:
            x = _lane_x(sender)
            out.append(
                _text(x + 10, y + 10, f"{signal.label} (no vCPU addressed)", 10, colour=colour)
            )
    elif record.thread == "host":
        targets = [t + 1 for t in _ioctl_target(record)]
        label = record.step.split(":", 1)[0]
        out += _arrows(0, targets, y + 12, "#616161", "ioctl", label, dashed=True)
    else:
        x = _lane_x(int(record.thread[4:]) + 1)
        label = record.step.split(":", 1)[0]
        out.append(
            f"<circle cx='{x:.1f}' cy='{y + 12}' r='4' fill='#212121'><title>"
            f"{escape(record.step)}</title></circle>"
        )
        out.append(_text(x - 8, y + 16, label, 10, "end", colour="#212121"))
    return out


def _arrows(sender, targets, y, colour, kind, label, dashed=False) -> list[str]:
    out = []
    x0 = _lane_x(sender)
    dash = " stroke-dasharray='5,3'" if dashed else ""
    for target in targets:
        x1 = _lane_x(target)
        if target == sender:
            out.append(
                f"<path d='M{x0 + 8:.1f},{y - 4} C{x0 + 40:.1f},{y - 14} {x0 + 40:.1f},{y + 10} "
                f"{x0 + 9:.1f},{y + 4}' fill='none' stroke='{colour}' stroke-width='1.6'{dash} "
                f"marker-end='url(#arrow-{kind})'/>"
            )
            continue
        pad = BAND / 2 + 2
        end = x1 - pad if x1 > x0 else x1 + pad
        out.append(
            f"<line x1='{x0:.1f}' y1='{y}' x2='{end:.1f}' y2='{y}' stroke='{colour}' "
            f"stroke-width='1.6'{dash} marker-end='url(#arrow-{kind})'/>"
        )
    if targets:
        right = any(t > sender for t in targets) or sender in targets
        x = x0 + BAND / 2 + 6 if right else x0 - BAND / 2 - 6
        anchor = "start" if right else "end"
        out.append(_text(x, y - 3, _fit(label, LANE - 10, 10), 10, anchor, colour, "bold"))
    return out


def _kvm_differs(record, vcpu: int) -> str:
    """KVM's values (short) where they differ from the prediction for this vCPU, or ''."""
    if record.observed is None:
        return ""
    shown = []
    first = {"mp_state": 0, "report": 1, "thread": 2, "cs.selector": 3, "rip": 4}
    keys = {k for k in set(record.predicted) | set(record.observed) if k[0] == vcpu}
    for key in sorted(keys, key=lambda k: (first.get(k[1], 9), k[1])):
        if key[0] != vcpu:
            continue
        field = key[1]
        default = "none" if field == "report" else "absent"
        want = record.predicted.get(key, default)
        got = record.observed.get(key, default)
        if _is_guest(want) or want == got:
            continue
        value = state_name(got) if field == "mp_state" else got
        shown.append(f"{field}={value:#x}" if isinstance(value, int) else f"{field}={value}")
    return ", ".join(shown)


def _is_guest(value) -> bool:
    from reference import GUEST

    return value is GUEST


def _legend(y: float) -> list[str]:
    out = [_text(12, y, "mp_state (model):", 11, weight="bold")]
    x = 150
    for name, colour in STATE_COLOURS.items():
        out.append(f"<rect x='{x}' y='{y - 10}' width='12' height='12' fill='{colour}'/>")
        out.append(_text(x + 16, y, name, 11))
        x += 16 + CHAR * len(name) + 18
    y += 20
    x = 150
    out.append(_text(12, y, "arrows:", 11, weight="bold"))
    for name, colour, dashed in (
        ("INIT", SIGNAL_COLOURS["INIT"], False),
        ("SIPI", SIGNAL_COLOURS["SIPI"], False),
        ("other IPI", "#6a1b9a", False),
        ("host ioctl", "#616161", True),
    ):
        dash = " stroke-dasharray='5,3'" if dashed else ""
        out.append(
            f"<line x1='{x}' y1='{y - 4}' x2='{x + 30}' y2='{y - 4}' stroke='{colour}' "
            f"stroke-width='1.6'{dash}/>"
        )
        out.append(_text(x + 36, y, name, 11))
        x += 36 + CHAR * len(name) + 24
    y += 20
    out.append(
        f"<rect x='150' y='{y - 10}' width='12' height='12' fill='white' stroke='{MISMATCH}' "
        "stroke-width='2.5'/>"
    )
    out.append(_text(168, y, "KVM showed something else (its value in red)", 11))
    return out


# ----------------------------------------------------------------------------------------------
# An exploration: outcome histogram and one shortest schedule per outcome

BAR = 360
MOVE_ROW = 20


def explore_svg(exploration) -> str:
    outcomes = sorted(exploration.outcomes.items(), key=lambda kv: -kv[1])
    threads = _threads(exploration)
    label_width = 620
    lanes_x = 24 + label_width
    width = max(lanes_x + 110 * len(threads) + 20, 24 + BAR + 520)
    body = [
        _text(
            12, 24, f"explore {exploration.trace} under {exploration.profile}", 15, weight="bold"
        ),
        _text(
            12,
            44,
            f"{exploration.states} states, "
            + (
                f"{exploration.interleavings} interleavings"
                if exploration.interleavings is not None
                else "interleavings uncounted (cycle)"
            ),
            11,
            colour="#555555",
        ),
    ]
    y = 74
    body.append(_text(12, y, "outcomes (number of schedules reaching each):", 12, weight="bold"))
    largest = max((n for _, n in outcomes), default=1) or 1
    for number, (label, count) in enumerate(outcomes, 1):
        broken = exploration.violations.get(label)
        colour = MISMATCH if broken else "#5c6bc0"
        y += 18
        mark = f"  VIOLATES {', '.join(broken)}" if broken else ""
        for line in wrap(f"({number}) {label}{mark}"):
            body.append(_text(24, y, line, 11, colour=MISMATCH if broken else "#212121"))
            y += 15
        length = max(2.0, BAR * count / largest)
        body.append(f"<rect x='24' y='{y - 10}' width='{length:.1f}' height='12' fill='{colour}'/>")
        body.append(_text(24 + length + 6, y, f"{count}", 11))
        y += 8
    shortest = getattr(exploration, "shortest", {}) or {}
    for number, (label, _) in enumerate(outcomes, 1):
        moves = shortest.get(label)
        if not moves:
            continue
        y += 34
        body.append(
            _text(
                12,
                y,
                f"a shortest schedule to outcome ({number}): {len(moves)} moves",
                12,
                weight="bold",
            )
        )
        y += 22
        for lane, thread in enumerate(threads):
            x = lanes_x + 110 * lane + 55
            body.append(_text(x, y, thread, 11, "middle", weight="bold"))
        top = y + 6
        for step, move in enumerate(moves, 1):
            y += MOVE_ROW
            lane = threads.index(_lane_of(move.thread))
            x = lanes_x + 110 * lane + 55
            body.append(_text(24, y, _fit(f"{step:>2}. {move.label}", label_width - 12), 11))
            body.append(f"<circle cx='{x}' cy='{y - 4}' r='5' fill='#3949ab'/>")
        for lane in range(len(threads)):
            x = lanes_x + 110 * lane + 55
            body.append(
                f"<line x1='{x}' y1='{top}' x2='{x}' y2='{y + 6}' stroke='#9e9e9e' "
                "stroke-dasharray='2,3'/>"
            )
    height = y + 30
    return _svg(width, height, body, f"kvmtest explore {exploration.trace}")


def _lane_of(thread: str) -> str:
    """KVM inside a vCPU thread ("kvm:vcpu1") runs on that thread's lane."""
    return thread.split(":", 1)[1] if thread.startswith("kvm:") else thread


def _threads(exploration) -> list[str]:
    seen = {"host"}
    for moves in (getattr(exploration, "shortest", {}) or {}).values():
        seen |= {_lane_of(m.thread) for m in moves}
    vcpus = sorted((t for t in seen if t.startswith("vcpu")), key=lambda t: int(t[4:]))
    return ["host"] + vcpus + sorted(seen - {"host"} - set(vcpus))
