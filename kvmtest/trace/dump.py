"""Writing a trace back as YAML: ``load_trace(dump_trace(t)) == t`` for every trace.

Recordings, shrunk random traces and traces built in code become files a person can read and
the loader takes back. Every step is written in the loader's raw form (an MSI's address and
data words, an ICR's 64-bit value), one flow mapping per line, integers above 9 in hex and
strings double-quoted with YAML's escapes, so the output needs no YAML library.
"""

from __future__ import annotations

from kvmtest import ops as f


def dump_trace(trace: f.Trace) -> str:
    """The trace as YAML text in the format of docs/traces.md."""
    lines = [f"name: {_scalar(trace.name)}"]
    if trace.description:
        lines.append(f"description: {_str(trace.description)}")
    for key in ("rules", "tags", "profiles", "requires"):
        values = getattr(trace, key)
        if values:
            lines.append(f"{key}: {_list(values)}")
    lines.append(f"pinned_profiles: {_list(trace.pinned_profiles)}")
    if trace.outcomes:
        lines.append("outcomes:")
        for profile, labels in trace.outcomes:
            lines.append(f"  {_scalar(profile)}:")
            lines += [f"    - {_str(label)}" for label in labels]
    s = trace.setup
    setup = {
        "vcpus": s.vcpus,
        "apic": s.apic,
        "irqchip": s.irqchip,
        "guest": s.guest,
        "sync_apic_map": s.sync_apic_map,
    }
    lines.append(f"setup: {_map(setup)}")
    lines.append("steps:")
    for step in trace.steps:
        lines += _step(step, "  ")
    return "\n".join(lines) + "\n"


def _step(step, indent: str) -> list[str]:
    if step.kind == "concurrently":
        out = [f"{indent}- concurrently:"]
        for branch in step.branches:
            thread = branch.thread if branch.thread == "host" else int(branch.thread[4:])
            out.append(f"{indent}    - thread: {thread}")
            out.append(f"{indent}      steps:")
            for inner in branch.steps:
                out += _step(inner, indent + "        ")
        return out
    out = [f"{indent}- {step_mapping(step)}"]
    if step.at is not None:
        out.append(f"{indent}  at: {step.at:.6f}")
    if step.tid is not None:
        out.append(f"{indent}  tid: {step.tid}")
    if step.result is not None:
        out.append(f"{indent}  result: {step.result}")
    return out


def step_mapping(step) -> str:
    """One operation as a YAML flow mapping: `msi: {...}`, `start: 1`."""
    kind = step.kind
    if kind == "msi":
        body = {"address_lo": step.address_lo, "address_hi": step.address_hi, "data": step.data}
        return f"msi: {_map(body)}"
    if kind == "icr":
        return f"icr: {_map({'vcpu': step.vcpu, 'value': step.value})}"
    if kind in ("set_regs", "set_sregs", "set_msrs") or (kind == "set_lapic" and step.registers):
        values = step.registers if kind == "set_lapic" else step.values
        return f"{kind}: {_map({'vcpu': step.vcpu, **dict(values)})}"
    if kind == "guest_ran":
        return f"guest_ran: {_map({'vcpu': step.vcpu})}"
    if kind in ("get_mp_state", "set_lapic", "smi", "nmi"):
        return f"{kind}: {step.vcpu}"
    if kind == "set_mp_state":
        state = f.MP_STATE_NAMES.get(step.state, step.state)
        return f"set_mp_state: {_map({'vcpu': step.vcpu, 'state': state})}"
    if kind == "set_vcpu_events":
        body = {"vcpu": step.vcpu}
        for name in ("sipi_vector", "latched_init", "smm"):
            if getattr(step, name) is not None:
                body[name] = getattr(step, name)
        return f"set_vcpu_events: {_map(body)}"
    if kind == "guest":
        if step.command == "spin":
            return f"spin: {_map({'vcpu': step.vcpu, 'iterations': step.argument})}"
        return f"{step.command}: {step.vcpu}"
    if kind == "smp_boot":
        return f"smp_boot: {_map({'broadcast': step.broadcast, 'vector': step.vector})}"
    if kind == "snapshot":
        return "snapshot: {}"
    if kind == "restore":
        body = {"order": list(step.order)}
        if step.mp_state:
            body["mp_state"] = {v: f.MP_STATE_NAMES.get(s, s) for v, s in step.mp_state}
        return f"restore: {_map(body)}"
    if kind == "observe":
        body = {"vcpus": list(step.vcpus), "read": list(step.read)}
        if step.fields is not None:
            body["fields"] = sorted(step.fields)
        if step.expect:
            pins = {vcpu: _pins(values) for vcpu, values in step.expect.items()}
            # The loader takes a single vCPU's pins unkeyed, several vCPUs' keyed by number.
            body["expect"] = pins[step.vcpus[0]] if len(step.vcpus) == 1 else pins
        return f"observe: {_map(body)}"
    raise ValueError(f"cannot dump a {kind} step")


def _pins(values: dict) -> dict:
    """Pinned values as a person writes them: mp_state by name."""
    return {
        name: f.MP_STATE_NAMES.get(value, value) if name == "mp_state" else value
        for name, value in values.items()
    }


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return hex(value) if value > 9 else str(value)
    if isinstance(value, str):
        return value if _plain(value) else _str(value)
    if isinstance(value, dict):
        return _map(value)
    if isinstance(value, (list, tuple)):
        return _list(value)
    raise ValueError(f"cannot dump {value!r}")


def _plain(text: str) -> bool:
    """Safe to write unquoted: a name such as `mp_state`, `cs.selector`, `x2apic`."""
    return (
        bool(text)
        and text[0].isalpha()
        and all(c.isalnum() or c in "._-" for c in text)
        and (text.lower() not in ("true", "false", "yes", "no", "on", "off", "null", "y", "n"))
    )


def _str(text: str) -> str:
    """A YAML double-quoted scalar: printable ASCII as is, everything else escaped."""
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def _list(values) -> str:
    return "[" + ", ".join(_scalar(v) for v in values) + "]"


def _map(mapping: dict) -> str:
    return "{" + ", ".join(f"{_scalar(k)}: {_scalar(v)}" for k, v in mapping.items()) + "}"
