"""Reading trace files: YAML in, format.Trace out, or a TraceError naming file and line.

Every mapping keeps the line it started on (the loader below records it under LINE), so each
complaint can point at the exact place. Unknown keys are errors, not silently ignored: a typo
in a trace must never turn a check into no check.
"""

import os
import re

import yaml

from kvmtest import ops as f

from .errors import TraceError

LINE = "__line__"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
REQUIREMENTS = ("smm", "x2apic", "split-irqchip")
GUEST_COMMANDS = ("start", "hlt", "x2apic", "spin", "report")


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records each mapping's line number."""

    def construct_mapping(self, node, deep=False):
        mapping = super().construct_mapping(node, deep=deep)
        mapping[LINE] = node.start_mark.line + 1
        return mapping


class _Context:
    """Where we are in a file, to build errors."""

    def __init__(self, path: str, nr_vcpus: int = 0):
        self.path = path
        self.nr_vcpus = nr_vcpus

    def error(self, line, reason: str) -> TraceError:
        return TraceError(self.path, line, reason)

    def mapping(self, value, what: str, line, keys: set, required: set = frozenset()) -> dict:
        if not isinstance(value, dict):
            raise self.error(line, f"{what} must be a mapping, not {_kind(value)}")
        line = value.get(LINE, line)
        unknown = sorted(k for k in value if k != LINE and k not in keys)
        if unknown:
            raise self.error(
                line, f"{what}: unknown key {unknown[0]!r} (expected: {', '.join(sorted(keys))})"
            )
        missing = sorted(k for k in required if k not in value)
        if missing:
            raise self.error(line, f"{what}: missing key {missing[0]!r}")
        return value

    def integer(self, value, what: str, line, low=None, high=None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(line, f"{what} must be an integer, not {_kind(value)}")
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"{low:#x}..{high:#x}" if high and high > 255 else f"{low}..{high}"
            raise self.error(line, f"{what} = {value} is out of range {span}")
        return value

    def choice(self, value, what: str, line, choices) -> str:
        if value not in choices:
            raise self.error(
                line, f"{what} = {value!r} is not one of: {', '.join(map(str, choices))}"
            )
        return value

    def vcpu(self, value, what: str, line) -> int:
        return self.integer(value, what, line, 0, self.nr_vcpus - 1)


def _kind(value) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def load_trace(path: str) -> f.Trace:
    """Parse one trace file; raise TraceError (file, line, reason) for anything malformed."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as exc:
        raise TraceError(path, None, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TraceError(path, None, "not UTF-8 text") from None
    return parse_trace(text, path)


def parse_trace(text: str, path: str = "<string>") -> f.Trace:
    try:
        document = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        line = mark.line + 1 if mark else None
        context = getattr(exc, "context_mark", None)
        if getattr(exc, "context", None) and context is not None and context.line + 1 != line:
            problem += f" ({exc.context} that starts at line {context.line + 1})"
        raise TraceError(path, line, f"not valid YAML: {problem}") from None
    ctx = _Context(path)
    top = ctx.mapping(
        document,
        "trace",
        1,
        {
            "name",
            "description",
            "rules",
            "tags",
            "profiles",
            "pinned_profiles",
            "requires",
            "setup",
            "steps",
        },
        {"name", "steps"},
    )
    line = top[LINE]
    name = top["name"]
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ctx.error(line, f"name {name!r} must be lower-case letters, digits, '-', '.', '_'")
    setup = _setup(ctx, top.get("setup", {}), line)
    ctx.nr_vcpus = setup.vcpus
    rules = tuple(_rule(ctx, r, line) for r in _list(ctx, top.get("rules", []), "rules", line))
    tags = tuple(str(t) for t in _list(ctx, top.get("tags", []), "tags", line))
    profiles = tuple(str(p) for p in _list(ctx, top.get("profiles", []), "profiles", line))
    requires = tuple(
        ctx.choice(r, "requires", line, REQUIREMENTS)
        for r in _list(ctx, top.get("requires", []), "requires", line)
    )
    pinned = tuple(
        str(p)
        for p in _list(ctx, top.get("pinned_profiles", ["mainline"]), "pinned_profiles", line)
    )
    steps_value = top["steps"]
    if not isinstance(steps_value, list) or not steps_value:
        raise ctx.error(line, "steps must be a non-empty list")
    steps = tuple(_step(ctx, s, line, setup, nested=False) for s in steps_value)
    return f.Trace(
        name=name,
        path=path,
        line=line,
        setup=setup,
        steps=steps,
        description=str(top.get("description", "")).strip(),
        rules=rules,
        tags=tags,
        profiles=profiles,
        requires=requires,
        pinned_profiles=pinned,
    )


def _list(ctx, value, what, line) -> list:
    if not isinstance(value, list):
        raise ctx.error(line, f"{what} must be a list, not {_kind(value)}")
    return value


def _rule(ctx, value, line) -> str:
    """Rule numbers: 12 (section b) or 'd7.3' (a quirk of section d.7)."""
    text = str(value)
    if not re.match(r"^(\d{1,2}|d7\.\d{1,2}|d8\.\d)$", text):
        raise ctx.error(line, f"rule {value!r} must be a rule number (12), a quirk (d7.3) or d8.N")
    return text


def _setup(ctx, value, line) -> f.Setup:
    keys = {"vcpus", "apic", "irqchip", "guest", "sync_apic_map"}
    value = ctx.mapping(value, "setup", line, keys)
    line = value.get(LINE, line)
    default = f.Setup()
    sync = value.get("sync_apic_map", default.sync_apic_map)
    if not isinstance(sync, bool):
        raise ctx.error(line, "setup.sync_apic_map must be true or false")
    return f.Setup(
        vcpus=ctx.integer(value.get("vcpus", default.vcpus), "setup.vcpus", line, 1, 64),
        apic=ctx.choice(value.get("apic", default.apic), "setup.apic", line, ("xapic", "x2apic")),
        irqchip=ctx.choice(
            value.get("irqchip", default.irqchip), "setup.irqchip", line, ("kernel", "split")
        ),
        guest=ctx.choice(
            value.get("guest", default.guest), "setup.guest", line, ("none", "stepper", "smp-boot")
        ),
        sync_apic_map=sync,
    )


def _mp_state(ctx, value, line) -> int:
    if isinstance(value, str):
        if value.upper() not in f.MP_STATES:
            raise ctx.error(line, f"unknown mp_state {value!r} (one of {', '.join(f.MP_STATES)})")
        return f.MP_STATES[value.upper()]
    return ctx.integer(value, "state", line, 0, 0xFFFFFFFF)


def _delivery(ctx, value, line) -> int:
    if isinstance(value, str):
        return f.DELIVERY_MODES[ctx.choice(value, "delivery", line, tuple(f.DELIVERY_MODES))]
    return ctx.integer(value, "delivery", line, 0, 7)


def _msi(ctx, value, line) -> f.Msi:
    raw = {"address_lo", "address_hi", "data"}
    fields = {"dest", "delivery", "vector", "dest_mode", "trigger", "level", "redirection_hint"}
    value = ctx.mapping(value, "msi", line, raw | fields)
    line = value.get(LINE, line)
    if raw & value.keys():
        if fields & value.keys():
            raise ctx.error(line, "msi: give either address_lo/address_hi/data or dest/delivery")
        return f.Msi(
            ctx.integer(value.get("address_lo", 0xFEE00000), "address_lo", line, 0, 0xFFFFFFFF),
            ctx.integer(value.get("address_hi", 0), "address_hi", line, 0, 0xFFFFFFFF),
            ctx.integer(value.get("data", 0), "data", line, 0, 0xFFFFFFFF),
            line=line,
        )
    if "dest" not in value or "delivery" not in value:
        raise ctx.error(line, "msi: needs dest and delivery (or raw address_lo/data)")
    dest = ctx.integer(value["dest"], "msi.dest", line, 0, 0xFF)
    logical = ctx.choice(
        value.get("dest_mode", "physical"), "msi.dest_mode", line, ("physical", "logical")
    )
    trigger = ctx.choice(value.get("trigger", "edge"), "msi.trigger", line, ("edge", "level"))
    level = ctx.integer(value.get("level", 0), "msi.level", line, 0, 1)
    hint = value.get("redirection_hint", False)
    address = 0xFEE00000 | dest << 12 | (logical == "logical") << 2 | bool(hint) << 3
    data = (
        ctx.integer(value.get("vector", 0), "msi.vector", line, 0, 255)
        | _delivery(ctx, value["delivery"], line) << 8
        | level << 14
        | (trigger == "level") << 15
    )
    return f.Msi(address, 0, data, line=line)


def icr_value(ctx, value, line, apic: str) -> int:
    """Build a 64-bit ICR from named fields (rule 40's layout)."""
    value = ctx.mapping(
        value,
        "icr",
        line,
        {
            "vcpu",
            "value",
            "dest",
            "delivery",
            "vector",
            "dest_mode",
            "level",
            "trigger",
            "shorthand",
        },
        {"vcpu"},
    )
    line = value.get(LINE, line)
    if "value" in value:
        return ctx.integer(value["value"], "icr.value", line, 0, (1 << 64) - 1)
    if "delivery" not in value:
        raise ctx.error(line, "icr: needs delivery (or a raw value)")
    high = 0xFFFFFFFF if apic == "x2apic" else 0xFF
    dest = ctx.integer(value.get("dest", 0), "icr.dest", line, 0, high)
    shorthand = ctx.choice(value.get("shorthand", "none"), "icr.shorthand", line, f.SHORTHANDS)
    dest_mode = ctx.choice(
        value.get("dest_mode", "physical"), "icr.dest_mode", line, ("physical", "logical")
    )
    trigger = ctx.choice(value.get("trigger", "edge"), "icr.trigger", line, ("edge", "level"))
    low = (
        ctx.integer(value.get("vector", 0), "icr.vector", line, 0, 255)
        | _delivery(ctx, value["delivery"], line) << 8
        | (dest_mode == "logical") << 11
        | ctx.integer(value.get("level", 1), "icr.level", line, 0, 1) << 14
        | (trigger == "level") << 15
        | f.SHORTHANDS[shorthand] << 18
    )
    dest_bits = dest << 32 if apic == "x2apic" else dest << 56
    return dest_bits | low


def _vcpus(ctx, value, line) -> tuple:
    items = value if isinstance(value, list) else [value]
    return tuple(ctx.vcpu(v, "vcpu", line) for v in items)


def _observe(ctx, value, line) -> f.Observe:
    if not isinstance(value, dict):
        return f.Observe(_vcpus(ctx, value, line), line=line)
    value = ctx.mapping(value, "observe", line, {"vcpus", "vcpu", "read", "fields", "expect"})
    line = value.get(LINE, line)
    vcpus = _vcpus(ctx, value.get("vcpus", value.get("vcpu")), line)
    read = tuple(
        ctx.choice(r, "observe.read", line, f.READS)
        for r in _list(ctx, value.get("read", list(f.DEFAULT_READ)), "observe.read", line)
    )
    readable = {name for r in read for name in f.fields_of_read(r)}
    fields = None
    if "fields" in value:
        fields = frozenset(_list(ctx, value["fields"], "observe.fields", line))
        for name in sorted(fields):
            if name not in readable:
                raise ctx.error(line, f"observe.fields: {name!r} is not produced by read {read}")
    expect = {}
    if "expect" in value:
        pins = value["expect"]
        if not isinstance(pins, dict):
            raise ctx.error(line, "observe.expect must map field names to values")
        if len(vcpus) > 1 and not all(isinstance(k, int) for k in pins if k != LINE):
            raise ctx.error(line, "observe.expect: with several vCPUs, key it by vCPU number")
        per_vcpu = pins if len(vcpus) > 1 else {vcpus[0]: pins}
        for vcpu, wanted in per_vcpu.items():
            if vcpu == LINE:
                continue
            if vcpu not in vcpus or not isinstance(wanted, dict):
                raise ctx.error(line, f"observe.expect: vCPU {vcpu!r} is not observed here")
            expect[vcpu] = {}
            for name, pinned in wanted.items():
                if name == LINE:
                    continue
                if name not in readable:
                    raise ctx.error(line, f"observe.expect: {name!r} is not read by this step")
                if name == "mp_state":
                    pinned = _mp_state(ctx, pinned, line)
                expect[vcpu][name] = ctx.integer(pinned, f"expect {name}", line, 0, (1 << 64) - 1)
    return f.Observe(vcpus, read, fields, expect, line=line)


def _step(ctx, value, line, setup: f.Setup, nested: bool, thread: str | None = None):
    if not isinstance(value, dict):
        raise ctx.error(line, f"a step must be a mapping like 'msi: ...', not {_kind(value)}")
    line = value.get(LINE, line)
    keys = [k for k in value if k != LINE]
    if len(keys) != 1:
        raise ctx.error(line, f"a step has exactly one kind, found {len(keys)}: {keys}")
    kind, body = keys[0], value[keys[0]]
    if isinstance(body, dict):
        line = body.get(LINE, line)
    guest_kinds = set(GUEST_COMMANDS) | {"icr"}
    if kind in guest_kinds and setup.guest != "stepper":
        raise ctx.error(line, f"step {kind!r} needs setup.guest: stepper")
    if kind == "msi":
        return _msi(ctx, body, line)
    if kind == "icr":
        body = ctx.mapping(body, "icr", line, set(), set()) if not isinstance(body, dict) else body
        vcpu = ctx.vcpu(body.get("vcpu"), "icr.vcpu", line)
        return f.Icr(vcpu, icr_value(ctx, body, line, setup.apic), line=line)
    if kind == "observe":
        return _observe(ctx, body, line)
    if kind in ("get_mp_state", "set_lapic", "smi", "nmi"):
        vcpu = ctx.vcpu(body, kind, line)
        cls = {"get_mp_state": f.GetMpState, "set_lapic": f.SetLapic, "smi": f.Smi, "nmi": f.Nmi}
        return cls[kind](vcpu, line=line)
    if kind == "set_mp_state":
        body = ctx.mapping(body, kind, line, {"vcpu", "state"}, {"vcpu", "state"})
        return f.SetMpState(
            ctx.vcpu(body["vcpu"], "vcpu", line), _mp_state(ctx, body["state"], line), line=line
        )
    if kind == "set_vcpu_events":
        body = ctx.mapping(
            body, kind, line, {"vcpu", "sipi_vector", "latched_init", "smm"}, {"vcpu"}
        )
        opt = {
            k: ctx.integer(body[k], k, line, 0, 255)
            for k in ("sipi_vector", "latched_init", "smm")
            if k in body
        }
        return f.SetVcpuEvents(ctx.vcpu(body["vcpu"], "vcpu", line), **opt, line=line)
    if kind in GUEST_COMMANDS:
        if kind == "spin":
            body = ctx.mapping(body, kind, line, {"vcpu", "iterations"}, {"vcpu", "iterations"})
            iterations = ctx.integer(body["iterations"], "spin.iterations", line, 0, 100_000)
            return f.GuestCommand(ctx.vcpu(body["vcpu"], "vcpu", line), kind, iterations, line=line)
        return f.GuestCommand(ctx.vcpu(body, kind, line), kind, line=line)
    if kind == "smp_boot":
        if setup.guest != "smp-boot":
            raise ctx.error(line, "step 'smp_boot' needs setup.guest: smp-boot")
        body = ctx.mapping(body or {}, kind, line, {"broadcast", "vector"})
        broadcast = body.get("broadcast", False)
        if not isinstance(broadcast, bool):
            raise ctx.error(line, "smp_boot.broadcast must be true or false")
        vector = ctx.integer(body.get("vector", 0x10), "smp_boot.vector", line, 0x08, 0x9F)
        return f.SmpBoot(broadcast, vector, line=line)
    if kind == "concurrently":
        if nested:
            raise ctx.error(line, "concurrently blocks cannot nest")
        return _concurrently(ctx, body, line, setup)
    known = (
        "msi, icr, observe, get_mp_state, set_mp_state, set_vcpu_events, set_lapic, smi, nmi, "
        + ", ".join(GUEST_COMMANDS)
        + ", smp_boot, concurrently"
    )
    raise ctx.error(line, f"unknown step {kind!r} (known: {known})")


def _concurrently(ctx, body, line, setup) -> f.Concurrently:
    branches = []
    for item in _list(ctx, body, "concurrently", line):
        item = ctx.mapping(item, "concurrently branch", line, {"thread", "steps"}, {"thread"})
        item_line = item.get(LINE, line)
        thread = item["thread"]
        if thread != "host":
            thread = f"vcpu{ctx.vcpu(thread, 'thread', item_line)}"
        if any(b.thread == thread for b in branches):
            raise ctx.error(item_line, f"concurrently: two branches for thread {thread}")
        steps = _list(ctx, item.get("steps", []), "steps", item_line)
        branches.append(
            f.Branch(thread, tuple(_step(ctx, s, item_line, setup, True, thread) for s in steps))
        )
    if len(branches) < 2:
        raise ctx.error(line, "concurrently needs at least two branches")
    return f.Concurrently(tuple(branches), line=line)


def find_trace_files(paths) -> list[str]:
    """Expand directories into their *.yaml / *.yml files, sorted (stable for xdist)."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found += [
                    os.path.join(root, n) for n in sorted(files) if n.endswith((".yaml", ".yml"))
                ]
        else:
            found.append(path)
    return found
