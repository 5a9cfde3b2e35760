"""Profiles as data: every switch is read, releases map to profiles, ``--set`` parses.

The dead-switch test flips each switch of each profile (every other value the profiles use, or
the other choices of an enum) and requires some observable difference: in
``describe.transition_rows`` or in one of the small model runs below. A switch the model never
reads fails it. A switch that only matters when another switch has some value says so in
``REQUIRES``; in profiles without that value the test checks that flipping indeed changes
nothing, so the list cannot go stale.
"""

from __future__ import annotations

import re
from dataclasses import fields, replace
from pathlib import Path

import pytest

from reference import (
    PROFILES,
    SWITCHES,
    Machine,
    ModelError,
    Profile,
    apply_switches,
    describe,
    get_profile,
    profile_for_release,
)
from reference import encodings as enc
from reference.machine import IR, RUN, SR, MpState, Phase
from reference.profiles import VALID_PAYLOAD, VALID_SMM, VALID_TRIPLE_FAULT, format_value

from .util import INIT, SIPI, boot_ap, ipi, msi, process, vm

BSP_BIT = 1 << 8
NMI = enc.DM_NMI


def _where(m: Machine, i: int = 1):
    v = m.vcpus[i]
    return (repr(v.mp_state), Phase(v.phase).name, str(v.last_exit))


def _regs(m: Machine, i: int = 1):
    s = m.get_sregs(i)
    return (m.get_regs(i), s["cs"], s["cr0"], s["apic_base"])


# ------------------------------------------------------------------ scenarios, one per behaviour


def bsp_bit_moved(p):
    """rule 11: the BSP bit moves from vCPU 0 to vCPU 1 (SVM: INIT keeps APIC_BASE, c.3)."""
    m = vm(p, flavour="svm")
    m.set_apic_base(0, m.vcpus[0].apic_base & ~BSP_BIT)
    m.set_apic_base(1, m.vcpus[1].apic_base | BSP_BIT)
    out = [msi(m, INIT, 0), msi(m, INIT, 1), process(m, 0), process(m, 1)]
    out += [msi(m, SIPI, 0, 0x10), msi(m, SIPI, 1, 0x10), process(m, 0), process(m, 1)]
    return out, m.get_regs(0), m.get_regs(1)


def smi(p):
    """rules 15, 32: KVM_SMI and an SMI IPI."""
    m = vm(p)
    return m.smi(1), ipi(m, 0, enc.DM_SMI, 1), m.get_vcpu_events(1)


def init_in_smm(p):
    """rules 15, 17: INIT and SIPI to an AP in SMM."""
    m = vm(p)
    m.vcpus[1].smm = True
    return msi(m, INIT, 1), msi(m, SIPI, 1, 0x10), process(m, 1), m.get_vcpu_events(1)


def init_in_vmx_root(p):
    """rule 16: INIT to an AP in VMX root operation."""
    m = vm(p)
    boot_ap(m)
    m.enter_run(1)
    m.guest_blocks_init(1, True)
    count = msi(m, INIT, 1)
    m.settle()
    m.kick_out(1)
    return count, process(m, 1), m.get_vcpu_events(1)


def _wake_by(p, state, dm):
    m = vm(p)
    m.vcpus[1].mp_state = state
    m.enter_run(1)
    count = msi(m, dm, 1, 0x10)
    m.settle()
    return count, _where(m)


def ap_reset_hold_woken(p):
    """rule 19: an NMI wakes an AP in AP_RESET_HOLD."""
    return _wake_by(p, MpState.AP_RESET_HOLD, NMI)


def stopped_woken(p):
    """rule 20 / a.1: a stray SIPI wakes an AP in a state no wake-up path expects."""
    return _wake_by(p, MpState.STOPPED, SIPI)


def pv_kick_halted(p):
    """rules 21, 22: KVM_HC_KICK_CPU to a halted AP."""
    m = vm(p)
    boot_ap(m)
    m.enter_run(1)
    m.guest_hlt(1)
    count = m.pv_kick(0, 1)
    m.settle()
    return count, _where(m)


def pv_unhalted_survives_runnable(p):
    """rule 21: a kick sets pv_unhalted; SET_MP_STATE(R) clears it (6.15) or not; HLT tells."""
    m = vm(p)
    boot_ap(m)
    m.enter_run(1)
    m.pv_kick(0, 1)
    m.settle()
    m.kick_out(1)
    rc = m.set_mp_state(1, int(RUN))
    m.enter_run(1)
    m.guest_hlt(1)
    m.settle()  # V2-style HLT writes H unconditionally; a kept pv_unhalted then wakes it
    return rc, _where(m)


def latched_init_wakes_hlt(p):
    """rule 18: a latched INIT (AP in SMM) and a halted AP."""
    m = vm(p)
    boot_ap(m)
    m.enter_run(1)
    m.guest_hlt(1)
    m.vcpus[1].smm = True
    count = msi(m, INIT, 1)
    m.settle()
    return count, _where(m)


def nmi_during_hlt_exit(p):
    """rule 22: an NMI between the HLT exit and kvm_emulate_halt."""
    m = vm(p)
    boot_ap(m)
    m.enter_run(1)
    hlt_exit, emulate_halt = m.atomic_steps("guest_hlt", 1)
    m.apply(hlt_exit)
    count = msi(m, NMI, 1)
    m.apply(emulate_halt)
    return count, _where(m)


def set_mp_state_without_lapic(p):
    """rule 28: KVM_SET_MP_STATE with no in-kernel irqchip."""
    m = Machine(2, p, irqchip="none")
    return [m.set_mp_state(1, value) for value in (1, 2, 3, 4, 9)]


def set_ir_with_smi_pending(p):
    """rule 28: SET_MP_STATE(IR) with an SMI pending."""
    m = vm(p)
    m.vcpus[1].smi_pending = True
    return m.set_mp_state(1, int(IR)), _where(m)


def uninitialized_ap(p):
    """rule 29: INIT+SIPI to an AP in the UNINITIALIZED branch; a kick; immediate_exit."""
    m = vm(p)
    m.enter_run(1)
    counts = msi(m, INIT, 1), msi(m, SIPI, 1, 0x10)
    kicked = m.kick_out(1)
    first = _where(m)
    m = vm(p)
    m.enter_run(1)
    msi(m, INIT, 1)
    msi(m, SIPI, 1, 0x10)
    m.settle()
    return counts, kicked, first, _where(m)


def immediate_exit(p):
    """d.3, rule 29: KVM_RUN with kvm_run.immediate_exit set, on the BSP and on a U AP."""
    m = vm(p)
    return m.enter_run(0, immediate_exit=True), m.enter_run(1, immediate_exit=True)


def run_in_blocked_ir(p):
    """d.3: KVM_RUN in INIT_RECEIVED while in SMM."""
    m = vm(p)
    m.vcpus[1].smm = True
    m.vcpus[1].mp_state = IR
    return m.enter_run(1), _where(m)


def run_in_sipi_received(p):
    """d.3: KVM_RUN in SIPI_RECEIVED (stuffed)."""
    m = vm(p)
    m.vcpus[1].mp_state = SR
    return m.enter_run(1), _where(m)


def vcpu_events(p):
    """d.5: accepted flags; VALID_SMM while INIT_RECEIVED."""
    m = vm(p)
    out = [m.set_vcpu_events(1, flags=VALID_PAYLOAD), m.get_vcpu_events(1)["flags"]]
    out.append(m.set_vcpu_events(1, flags=VALID_TRIPLE_FAULT))
    m.vcpus[1].mp_state = IR
    out.append(m.set_vcpu_events(1, flags=VALID_SMM, smm=1))
    return out


def register_images(p):
    """section c: RESET, then INIT + SIPI, in both vendors' flavours."""
    out = []
    for flavour in ("vmx", "svm"):
        m = vm(p, flavour=flavour)
        out.append(_regs(m))
        msi(m, INIT, 1)
        process(m, 1)
        msi(m, SIPI, 1, 0x10)
        process(m, 1)
        out.append(_regs(m))
    return out


def init_keeps_apic_id(p):
    """d.7.9: an AP with APIC ID 5 and a moved APIC base gets INIT + SIPI."""
    m = vm(p)
    m.set_lapic(1, apic_id=5)
    m.set_apic_base(1, 0xFED00000 | (1 << 11))
    counts = [msi(m, INIT, 5), process(m, 1)]
    counts += [msi(m, SIPI, 5, 0x10) + msi(m, SIPI, 1, 0x10), process(m, 1)]
    return counts, msi(m, NMI, 5), msi(m, NMI, 1), m.get_sregs(1)["apic_base"]


def x2apic_wide_dest(p):
    """rules 35, 40: x2APIC NMI to destination 0x101, and one with a reserved ICR bit."""
    m = vm(p)
    m.enable_x2apic(0)
    m.enable_x2apic(1)
    wide = m.icr_write(0, enc.encode_icr(NMI, 0, 0x101, x2apic=True), True)
    reserved = m.icr_write(0, enc.encode_icr(NMI, 0, 1, x2apic=True) | (1 << 13), True)
    return wide, reserved


def map_slots(p):
    """rules 33-35, 37: MSIs to a vCPU missing from the map, before and after a SPIV toggle, and
    a logical MSI with every APIC software-disabled."""
    m = vm(p, enrol=False)
    out = [msi(m, NMI, 1)]
    m.lapic_write(0, "spiv", 0x1FF)
    out.append(msi(m, NMI, 1))
    m = vm(p)
    out.append(m.signal_msi(*enc.encode_msi(NMI, 0, 1, logical=True)))
    return out


def redirection_hint(p):
    """d.4: a logical MSI with the redirection hint to two software-enabled APICs."""
    m = vm(p)
    for i in (0, 1):
        m.lapic_write(i, "spiv", 0x1FF)
        m.lapic_write(i, "ldr", 1 << (24 + i))
    address_lo, address_hi, data = enc.encode_msi(NMI, 0, 3, logical=True)
    return m.signal_msi(address_lo | 1 << 3, address_hi, data)


def x2apic_format_msi(p):
    """rules 38, 39: MSIs with address_hi bits when the VM asked for 32-bit x2APIC IDs."""
    m = vm(p, x2apic_format=True)
    address_lo, _, data = enc.encode_msi(NMI, 0, 1)
    return m.signal_msi(address_lo, 0x1, data), m.signal_msi(address_lo, 0x100, data)


SCENARIOS = [
    bsp_bit_moved,
    smi,
    init_in_smm,
    init_in_vmx_root,
    ap_reset_hold_woken,
    stopped_woken,
    pv_kick_halted,
    pv_unhalted_survives_runnable,
    latched_init_wakes_hlt,
    nmi_during_hlt_exit,
    set_mp_state_without_lapic,
    set_ir_with_smi_pending,
    uninitialized_ap,
    immediate_exit,
    run_in_blocked_ir,
    run_in_sipi_received,
    vcpu_events,
    register_images,
    init_keeps_apic_id,
    x2apic_wide_dest,
    map_slots,
    redirection_hint,
    x2apic_format_msi,
]


def _safe(fn, p):
    try:
        return repr(fn(p))
    except (ModelError, AssertionError) as exc:  # AssertionError: a util helper's expectation
        return f"{type(exc).__name__}: {exc}"


def observe(p: Profile) -> dict:
    """What the model says for ``p``: the transition table rows and every scenario."""
    out = {"transition_rows": _safe(describe.transition_rows, p)}
    out.update((fn.__name__, _safe(fn, p)) for fn in SCENARIOS)
    return out


# ------------------------------------------------------------------ dead switches

# switch -> (switch, value) it needs to matter, or (switch, predicate of its value); only the
# model's own logic belongs here.
REQUIRES = {
    # No pending events with the sender writing mp_state: nothing is latched or processed.
    "init_blocked_in_smm": ("sender_writes_mp_state", False),
    "init_blocked_nested": ("sender_writes_mp_state", False),
    "runnable_needs_init_allowed": ("init_blocked_in_smm", True),
    "run_u_processes_events": ("sender_writes_mp_state", False),
    "run_rejects_sipi_received": ("sender_writes_mp_state", False),  # V1 resets from SR
    "run_rejects_blocked_ir": ("init_blocked_in_smm", True),
    "runnable_clears_pv_unhalted": ("pv_unhalt", True),
    "vcpu_events_rejects_smm_in_ir": ("vcpu_events_flags", lambda flags: bool(flags & VALID_SMM)),
    # Who writes the image (common code or each vendor) is a V3 distinction.
    "common_reset_image": ("image", "v3"),
    # 3.x: the fast path's "nobody" is -1, the same as the slow path's.
    "logical_map_tracks_sw_disabled": ("fast_path_empty_result", 0),
}


def _holds(p: Profile, needed) -> bool:
    switch, want = needed
    value = getattr(p, switch)
    return want(value) if callable(want) else value == want


def _alternatives(name: str, current) -> list:
    sw = SWITCHES[name]
    if sw.kind == "bool":
        return [not current]
    if sw.kind == "enum":
        return [c for c in sw.choices if c != current]
    used = {getattr(p, name) for p in PROFILES.values()}
    return sorted(used - {current}, key=repr)


def _flips():
    for pname, p in PROFILES.items():
        for name in SWITCHES:
            for value in _alternatives(name, getattr(p, name)):
                yield pytest.param(pname, name, value, id=f"{pname}-{name}={value!r}")


_BASELINE: dict = {}


@pytest.mark.parametrize("pname, name, value", list(_flips()))
def test_flipping_a_switch_changes_a_prediction(pname, name, value):
    base = PROFILES[pname]
    if pname not in _BASELINE:
        _BASELINE[pname] = observe(base)
    before = _BASELINE[pname]
    after = observe(replace(base, **{name: value}))
    differs = sorted(k for k in before if before[k] != after[k])
    needed = REQUIRES.get(name)
    if needed and not _holds(base, needed):
        assert not differs, f"{name} matters without {needed[0]}={needed[1]}: {differs}"
    else:
        assert differs, f"{pname}: {name}={value!r} changes nothing the tests observe"


def test_every_switch_has_another_value_and_a_checked_profile():
    for name in SWITCHES:
        assert any(_alternatives(name, getattr(p, name)) for p in PROFILES.values()), name
        needed = REQUIRES.get(name)
        if needed:
            assert any(_holds(p, needed) for p in PROFILES.values()), name


def test_switch_metadata():
    names = {f.name for f in fields(Profile)} - {"name", "description", "releases", "changes"}
    assert set(SWITCHES) == names
    for sw in SWITCHES.values():
        assert sw.layer in ("arch", "abi"), sw
        assert sw.rule and sw.doc, sw
        assert sw.kind in ("bool", "int", "set", "enum"), sw
    assert SWITCHES["image"].choices == ("v1", "v2", "v3")
    assert SWITCHES["set_mp_state_whitelist"].kind == "set"
    assert "generation" not in names


def test_switch_rules_match_the_switch_index():
    """Each switch cites the rules docs/semantics.md's switch index gives it: one rule book."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "semantics.md").read_text()
    index = text.split('<a id="switch-index"></a>', 1)[1]
    rows = dict(re.findall(r"^\| `([a-z_0-9]+)` \| (.*?) \|$", index, re.MULTILINE))
    assert {name: sw.rule for name, sw in SWITCHES.items()} == rows


def test_profile_table_shows_layer_and_rule():
    table = describe.profile_table()
    for sw in SWITCHES.values():
        assert f"| {sw.name} | {sw.layer} | {sw.rule} |" in table
    ranges = "3.0-3.9 | 3.10 | 4.18-4.19 | 5.4-5.10 | 6.1-6.2 | 6.3-6.14 | 6.17+"
    assert f"| releases | | | | {ranges} |" in table


# ------------------------------------------------------------------ releases


@pytest.mark.parametrize(
    "release, name",
    [
        ("6.18.44-fc-v595", "mainline"),
        ("6.17", "mainline"),
        ("7.0.1", "mainline"),
        ("6.12.100+deb12-amd64", "linux-6.12"),
        ("6.3.0", "linux-6.12"),
        ("6.14.9", "linux-6.12"),
        ("6.1.0-50-amd64", "linux-6.1"),
        ("6.2.16", "linux-6.1"),
        ("3.10.0-1160.el7.x86_64", "linux-3.10"),
        ("3.9.11", "linux-3.9"),
        ("3.0.101", "linux-3.9"),
    ],
)
def test_profile_for_release(release, name):
    assert profile_for_release(release) is PROFILES[name]


@pytest.mark.parametrize(
    "release, nearest",
    [
        ("5.11.0", "nearest: linux-5.10 (5.4-5.10), linux-6.1 (6.1-6.2)"),
        ("6.0.19", "nearest: linux-5.10 (5.4-5.10), linux-6.1 (6.1-6.2)"),
        ("4.20.17", "nearest: linux-4.18 (4.18-4.19), linux-5.10 (5.4-5.10)"),
        ("6.15.2", "nearest: linux-6.12 (6.3-6.14), mainline (6.17+)"),
        ("4.2", "nearest: linux-3.10 (3.10), linux-4.18 (4.18-4.19)"),
        ("2.6.32-754.el6", "nearest: linux-3.9 (3.0-3.9)"),
    ],
)
def test_uncovered_release_names_the_nearest_profiles(release, nearest):
    with pytest.raises(ModelError) as info:
        profile_for_release(release)
    message = str(info.value)
    major_minor = ".".join(release.split(".")[:2]).split("-")[0]
    assert f"no profile covers {major_minor}" in message and repr(release) in message
    assert nearest in message


@pytest.mark.parametrize("release", ["", "linux", "v6.1", "6"])
def test_unparseable_release(release):
    with pytest.raises(ModelError, match="cannot read a kernel version"):
        profile_for_release(release)


def test_release_ranges_are_ordered_and_disjoint():
    ranges = [p.releases for p in PROFILES.values()]
    for (lo, hi), (next_lo, _) in zip(ranges, ranges[1:], strict=False):
        assert lo <= hi < next_lo
    assert ranges[-1][1] is None


def test_default_profile_delegates():
    from kvmtest.host import default_profile

    assert default_profile("6.1.0-50-amd64") == "linux-6.1"
    assert default_profile("6.12.100+deb12-amd64") == "linux-6.12"
    assert default_profile("6.18.44-fc-v595") == "mainline"
    assert default_profile("5.10.0-32-amd64") == "linux-5.10"
    assert default_profile("5.4.0-216-generic") == "linux-5.10"
    assert default_profile("4.18.20") == "linux-4.18"
    with pytest.raises(ModelError, match="no profile covers 5.15"):
        default_profile("5.15.0-140-generic")


# ------------------------------------------------------------------ --set


def test_apply_switches_parses_each_type():
    p = apply_switches(
        "mainline",
        [
            "hlt_checks_pending_events=false",
            "pv_unhalt = NO",
            "immediate_exit=0",
            "fast_path_empty_result=-1",
            "vcpu_events_flags=0x7",
            "phys_dest_mask=255",
            "set_mp_state_whitelist=0,1,9",
            "image=v2",
        ],
    )
    assert p.name == "mainline"
    assert (p.hlt_checks_pending_events, p.pv_unhalt, p.immediate_exit) == (False, False, False)
    assert (p.fast_path_empty_result, p.vcpu_events_flags, p.phys_dest_mask) == (-1, 7, 0xFF)
    assert p.set_mp_state_whitelist == frozenset({0, 1, 9}) and p.image == "v2"
    assert (
        apply_switches("linux-6.1", ["set_mp_state_whitelist=none"]).set_mp_state_whitelist is None
    )
    assert apply_switches("linux-3.10", ["pv_unhalt=yes", "bsp_by_apic_base=1"]).pv_unhalt is True


def test_apply_switches_records_changes_and_label():
    p = apply_switches("mainline", ["hlt_checks_pending_events=false"])
    assert p.changes == (("hlt_checks_pending_events", False),)
    assert p.label == "mainline[hlt_checks_pending_events=false]"
    assert PROFILES["mainline"].label == "mainline" and PROFILES["mainline"].changes == ()
    q = apply_switches(p, ["vcpu_events_flags=7", "hlt_checks_pending_events=true"])
    assert q.label == "mainline[hlt_checks_pending_events=true;vcpu_events_flags=0x7]"
    assert get_profile(q) is q
    assert Machine(2, q).profile is q


def test_apply_switches_label_round_trips():
    """What a label shows parses back to the same values."""
    for p in PROFILES.values():
        items = [f"{n}={format_value(getattr(p, n), n)}" for n in SWITCHES]
        q = apply_switches("mainline", items)
        assert all(getattr(q, n) == getattr(p, n) for n in SWITCHES), p.name


def test_apply_switches_changes_the_model():
    m = vm(apply_switches("mainline", ["hlt_checks_pending_events=false"]))
    boot_ap(m)
    m.enter_run(1)
    hlt_exit, emulate_halt = m.atomic_steps("guest_hlt", 1)
    m.apply(hlt_exit)
    msi(m, INIT, 1)
    m.apply(emulate_halt)
    assert m.vcpus[1].mp_state == MpState.HALTED  # mainline itself stays RUNNABLE (rule 22)


@pytest.mark.parametrize(
    "item, message",
    [
        ("no_such_switch=1", "unknown switch 'no_such_switch'; valid switches: sender_writes"),
        ("pv_unhalt", "expected switch=value"),
        ("pv_unhalt=maybe", "valid: true, false, 1, 0, yes, no"),
        ("image=v4", "valid: v1, v2, v3"),
        ("fast_path_empty_result=1.5", "decimal or 0x hex"),
        ("fast_path_empty_result=0x", "decimal or 0x hex"),
        ("set_mp_state_whitelist=0,x", "comma-separated integers"),
    ],
)
def test_apply_switches_refuses(item, message):
    with pytest.raises(ModelError, match=message.replace("(", r"\(")):
        apply_switches("mainline", [item])


def test_apply_switches_unknown_profile():
    with pytest.raises(ModelError, match="unknown profile"):
        apply_switches("linux-2.6", [])
