"""`kvmtest doctor`: what a user checks first on a new host."""

import json

from kvmtest.host import CAPABILITIES, default_profile, probe
from reference import ModelError


def _profile_line(release: str) -> str:
    try:
        return f"{default_profile(release)} (chosen from the kernel release)"
    except ModelError as exc:
        return f"none: {exc}"


def render_text(info) -> str:
    lines = [
        f"kernel            {info.kernel} ({info.machine})",
        f"binding           {'compiled' if info.binding else 'absent'}",
        f"device            {info.device}: "
        + ("absent" if not info.device_present else "rw ok" if info.device_access else "no access"),
        f"KVM API version   {info.api_version if info.api_version is not None else '-'}",
        f"vendor backend    {info.backend} (model flavour {info.flavour})",
        f"  decided by      {info.backend_decided_by or '-'}",
        f"x2APIC for guests {'-' if info.x2apic is None else 'yes' if info.x2apic else 'no'}",
        f"model profile     {_profile_line(info.kernel)}",
    ]
    if info.capabilities:
        lines.append("capabilities")
        for name, required, purpose in CAPABILITIES:
            value = info.capabilities.get(name, 0)
            state = "absent" if not value else "present" if value == 1 else f"present ({value})"
            need = "required" if required else "optional"
            lines.append(f"  {name:<28} {state:<15} {need}: {purpose}")
    for problem in info.problems:
        lines.append(f"problem: {problem}")
    for advice in info.advice:
        lines.append(f"what to do: {advice}")
    if info.full_mode:
        lines.append("verdict: full conformance mode possible (real KVM and the reference model)")
    else:
        lines.append(f"verdict: reference-only mode ({info.problems[0]})")
    return "\n".join(lines)


SCHEMA_VERSION = 1


def main(args) -> int:
    info = probe(args.device)
    if args.json:
        # schema_version: bumped when a key is removed or changes meaning (adding one is not)
        document = {"schema_version": SCHEMA_VERSION, **info.to_json()}
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print(render_text(info))
    return 0 if info.full_mode else 1
