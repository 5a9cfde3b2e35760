"""docs/answers.md: what-if questions about INIT/SIPI on KVM, answered by running their traces.

    python -m kvmtest.answers > docs/answers.md     # also rewrites docs/answers/*.svg

Each question has a trace in docs/answers/. Its answer on KVM is measured on this host (the
trace run on /dev/kvm, judged under the host's default profile) and written as the final-state
sentences of `kvmtest show`; the model's answer is the same sentence under every profile of
reference.PROFILES; the picture is `kvmtest show --svg` of the KVM run. Without KVM the
KVM answers and pictures already on the page are kept as recorded (the model parts are always
regenerated). tests/docs/test_answers.py regenerates the model parts and compares, and with KVM
re-runs the traces and checks the recorded KVM answers and pictures.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
ANSWERS_DIR = DOCS / "answers"
PAGE = DOCS / "answers.md"


@dataclass(frozen=True)
class Question:
    key: str  # docs/answers/<key>.yaml and .svg
    question: str
    vcpu: int  # the vCPU the question is about
    source: str  # where the question was asked (URL)
    context: str  # what was asked there, in our words


QUESTIONS = (
    Question(
        "sipi-before-first-run",
        "The guest's INIT and SIPI reach an AP before the VMM ever ran its thread. Does the AP "
        "start when it first enters KVM_RUN, or wait forever for a SIPI that already came?",
        1,
        "https://github.com/firecracker-microvm/firecracker/pull/5897",
        "Firecracker's cold-boot BSP/AP race: a reviewer asks what happens if the BSP sends "
        "both INIT and SIPI before the AP is ever scheduled.",
    ),
    Question(
        "set-init-received-late",
        "The VMM sets the AP to INIT_RECEIVED with KVM_SET_MP_STATE after the guest's INIT and "
        "SIPI already arrived, but before the AP first runs. Does that lose the SIPI?",
        1,
        "https://github.com/firecracker-microvm/firecracker/pull/5897",
        "The same pull request parks APs in KVM_MP_STATE_INIT_RECEIVED at creation; the "
        "reviewer asks whether an AP set so late blocks waiting for a SIPI that never comes.",
    ),
    Question(
        "sipi-before-init",
        "The SIPI arrives before the INIT (or a late INIT lands after the SIPI). Does the AP "
        "still start?",
        1,
        "https://github.com/microsoft/openvmm/pull/3666",
        "OpenVMM's AP start-up race: a deferred INIT that lands after the guest's SIPI resets "
        "the AP and discards the SIPI, leaving APs stranded in wait-for-SIPI (the Firecracker "
        "thread above names the same case).",
    ),
    Question(
        "init-while-halted",
        "An AP sleeps in HLT inside KVM_RUN when the OS sends it INIT. Does the INIT wake it, "
        "and does it then wait for a SIPI or run on?",
        1,
        "https://github.com/projectacrn/acrn-hypervisor/pull/4404",
        "ACRN: APs that executed HLT before the OS re-INITs them were not woken by the "
        "INIT/SIPI, because the HLT wait was not reset.",
    ),
    Question(
        "sipi-resent",
        "Firmware resends a SIPI to an AP that already started (it believes the first was "
        "lost). Does the second SIPI restart the AP at the new vector?",
        1,
        "https://github.com/tianocore/edk2/pull/13164",
        "OVMF AP SIPI resend: the BSP spins forever when an AP never consumes its Start-up "
        "IPI; the fix resends the SIPI, so what a second SIPI does to a started AP matters.",
    ),
    Question(
        "restore-events-drops-init",
        "An INIT is pending when the VMM writes back vCPU events with KVM_SET_VCPU_EVENTS, "
        "VALID_SMM set and smi.latched_init = 0. Is the INIT lost?",
        1,
        "https://github.com/microsoft/openvmm/pull/4014",
        "OpenVMM sets KVM_SET_VCPU_EVENTS flags only for values it means to write, so as not "
        "to clear a signal another processor raised in the meantime.",
    ),
)

_KVM_LINE = re.compile(r"^- \*\*KVM on this host\*\* \(([^)]*)\): (.*)$", re.MULTILINE)


def trace_path(question: Question) -> Path:
    return ANSWERS_DIR / f"{question.key}.yaml"


def svg_path(question: Question) -> Path:
    return ANSWERS_DIR / f"{question.key}.svg"


def _sentence(result, vcpu: int, side: str) -> str:
    from kvmtest.report.timeline import kvm_facts, kvm_sentence, model_sentence

    if not result.timeline:
        return f"({result.status.value}: {result.message})"
    if side == "kvm":
        text = kvm_sentence(vcpu, kvm_facts(result.timeline))
        agree = "agrees" if not result.mismatches else f"differs in {len(result.mismatches)} places"
        return f"{text} (the model under {result.profile} {agree})"
    return model_sentence(result.timeline[-1].model[vcpu])


def model_answers(question: Question, flavour: str = "vmx") -> dict:
    """profile -> the model's final-state sentence for the question's vCPU."""
    import reference
    from kvmtest.trace import HostContext, load_trace, run_trace

    trace = load_trace(str(trace_path(question)))
    host = HostContext("reference", flavour=flavour)
    out = {}
    for name in reference.PROFILES:
        result = run_trace(trace, name, host, timeline=True)
        if not trace.applies_to(name):
            out[name] = "(the trace does not apply to this profile)"
        elif result.status.value == "error":
            out[name] = f"(error: {result.message})"
        else:
            out[name] = _sentence(result, question.vcpu, "model")
    return out


def measure_kvm(backend) -> dict:
    """key -> (host label, KVM's final-state sentence, SVG text) from runs on this host."""
    from kvmtest.host import default_profile
    from kvmtest.report.svg import run_svg
    from kvmtest.trace import load_trace, run_trace

    host = backend.host
    profile = default_profile(host.get("kernel", ""))
    label = f"Linux {host.get('kernel', '?')}, {host.get('backend', '?')}"
    out = {}
    for question in QUESTIONS:
        trace = load_trace(str(trace_path(question)))
        result = run_trace(trace, profile, backend.context, timeline=True)
        out[question.key] = (label, _sentence(result, question.vcpu, "kvm"), run_svg(trace, result))
    return out


def recorded_kvm(text: str) -> dict:
    """key -> (host label, sentence) as the page records them (for hosts without KVM)."""
    out = {}
    for block in text.split("\n## ")[1:]:
        key = re.search(r"\(answers/([a-z0-9-]+)\.yaml\)", block)
        line = _KVM_LINE.search(block)
        if key and line:
            out[key.group(1)] = (line.group(1), line.group(2))
    return out


def render(kvm: dict, flavour: str = "vmx") -> str:
    """The page, from the model (always) and `kvm` (key -> (host label, sentence, ...))."""
    import reference

    lines = [
        "# What if...? INIT and SIPI on KVM, answered by running them",
        "",
        "<!-- Generated by `python -m kvmtest.answers > docs/answers.md`; do not edit by hand."
        " tests/docs/test_answers.py checks it. -->",
        "",
        "Questions VMM, firmware and kernel authors have asked about INIT and SIPI, each answered "
        "by a trace in [answers/](answers/) run on this host's KVM and on the reference model "
        "under every profile (" + ", ".join(reference.PROFILES) + "). The answers are the "
        "final-state sentences of `kvmtest show TRACE`, about the vCPU the question is about; "
        "the picture is `kvmtest show TRACE --svg` of the KVM run. Register values the model "
        "does not know because the guest ran code are called guest-owned.",
        "",
    ]
    for number, question in enumerate(QUESTIONS, 1):
        rel = f"answers/{question.key}"
        lines += [
            f"## {number}. {question.question}",
            "",
            f"Asked in {question.source}: {question.context}",
            "",
            f"Trace: [{rel}.yaml]({rel}.yaml) (`kvmtest show docs/{rel}.yaml`).",
            "",
        ]
        answer = kvm.get(question.key)
        if answer is None:
            lines.append("- **KVM on this host** (not measured): no KVM was available.")
        else:
            lines.append(f"- **KVM on this host** ({answer[0]}): {answer[1]}")
        for profile, sentence in model_answers(question, flavour).items():
            lines.append(f"- model, {profile}: {sentence}")
        lines += ["", f"![the run of {question.key}]({rel}.svg)", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    from kvmtest import suite

    backend = suite.choose_backend("auto", False)
    try:
        if backend.context.backend == "kvm":
            kvm = measure_kvm(backend)
            for question in QUESTIONS:
                svg_path(question).write_text(kvm[question.key][2], encoding="utf-8")
        else:
            print("kvmtest.answers: no KVM here: keeping the recorded KVM answers", file=sys.stderr)
            kvm = recorded_kvm(PAGE.read_text(encoding="utf-8")) if PAGE.exists() else {}
    finally:
        if backend.context.kvm is not None:
            backend.context.kvm.close()
    sys.stdout.write(render(kvm, backend.context.flavour))
    return 0


if __name__ == "__main__":
    sys.exit(main())
