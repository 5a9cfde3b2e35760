"""The mutants of the model: every switch of the host's profile flipped, and every code site.

A switch mutant is the profile with one switch set to another value (``apply_switches``):
booleans flipped, enums to every other choice, other kinds to every value another profile
gives the switch. A code mutant is one site of ``ast_mutants``.
"""

from __future__ import annotations

from dataclasses import dataclass

import reference

from . import ast_mutants


@dataclass(frozen=True)
class Mutant:
    id: str  # "switch:image=v2", "machine:412"
    kind: str  # "switch" or "code"
    description: str
    where: str  # the switch's rule, or file:line
    spec: dict  # what the worker installs
    line: int = 0
    function: str = ""


def switch_mutants(profile: str) -> list[Mutant]:
    base = reference.get_profile(profile)
    out = []
    for name, sw in reference.SWITCHES.items():
        current = getattr(base, name)
        if sw.kind == "bool":
            values = [not current]
        elif sw.kind == "enum":
            values = [c for c in sw.choices if c != current]
        else:
            seen = []
            for p in reference.PROFILES.values():
                v = getattr(p, name)
                if v != current and v not in seen:
                    seen.append(v)
            values = seen or ([current + 1] if sw.kind == "int" else [])
        for value in values:
            text = reference.profiles.format_value(value, name)
            out.append(
                Mutant(
                    f"switch:{name}={text}",
                    "switch",
                    f"{name}: {reference.profiles.format_value(current, name)} -> {text}",
                    sw.rule,
                    {"kind": "switch", "set": f"{name}={text}"},
                )
            )
    return out


def code_mutants(modules=ast_mutants.MODULES) -> list[Mutant]:
    out = []
    for module in modules:
        for site in ast_mutants.sites(module):
            out.append(
                Mutant(
                    site.id,
                    "code",
                    f"{site.operator}: {site.description} (in {site.function})",
                    site.where,
                    {"kind": "code", "module": module, "index": site.index},
                    site.line,
                    site.function,
                )
            )
    return out
