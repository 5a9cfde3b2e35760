"""`kvmtest show TRACE`: what happened, step by step, on the model and on KVM.

Runs one trace as `kvmtest run` does (same backend choice and profile), keeping the timeline,
and prints it as a table (kvmtest.report.timeline); `--svg FILE` also draws it as a sequence
diagram (kvmtest.report.svg). Exit codes as `run`: 0 passed, 1 mismatch or error, 2 bad usage
or input, 4 skipped.
"""

import sys

from kvmtest.report import svg, timeline
from kvmtest.trace.result import Status

from .errors import UsageError
from .profiles import add_profile_options
from .run import _profile

EXIT_USAGE = 2
EXIT_CODES = {Status.PASS: 0, Status.FAIL: 1, Status.ERROR: 1, Status.SKIP: 4}


def add_parser(commands) -> None:
    show = commands.add_parser(
        "show",
        help="replay one trace and show every step on the model and on KVM, side by side",
        description="Replay TRACE like `kvmtest run` and print a table with one block per step: "
        "each vCPU's mp_state, thread, pending INIT/SIPI, stored SIPI vector, CS:RIP and report "
        "as the model predicts them and as KVM showed them, differences marked; then the final "
        "state in words. --svg also draws the run as a sequence diagram.",
    )
    show.add_argument("trace", metavar="TRACE", help="a trace file")
    show.add_argument(
        "--backend",
        choices=("auto", "kvm", "reference"),
        default="auto",
        help="kvm: a real VM; reference: the model alone; auto (default): kvm where usable",
    )
    add_profile_options(show)
    show.add_argument("--svg", metavar="FILE", help="also write the run as an SVG picture")


def main(args) -> int:
    from kvmtest import suite
    from kvmtest.trace import TraceError, load_trace, run_trace

    try:
        trace = load_trace(args.trace)
    except (TraceError, OSError) as exc:
        print(f"kvmtest show: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        backend = suite.choose_backend(args.backend, False)
        profile = _profile(args, backend)
    except UsageError as exc:
        print(f"kvmtest show: {exc}", file=sys.stderr)
        return EXIT_USAGE
    label = getattr(profile, "label", getattr(profile, "name", profile))
    print(f"kvmtest: {backend.banner}; profile {label}", file=sys.stderr)
    try:
        result = run_trace(trace, profile, backend.context, timeline=True)
    finally:
        if backend.context.kvm is not None:
            backend.context.kvm.close()
    print(heading(trace, result))
    table = timeline.render_timeline(result)
    if table:
        print()
        print(table)
    if args.svg:
        with open(args.svg, "w", encoding="utf-8") as out:
            out.write(svg.run_svg(trace, result))
        print(f"kvmtest show: wrote {args.svg}", file=sys.stderr)
    return EXIT_CODES[result.status]


def heading(trace, result) -> str:
    setup = trace.setup
    lines = [
        f"{result.status.value.upper()}  {trace.name}  ({trace.path})",
        f"  {setup.vcpus} vCPUs, {setup.apic}, {setup.irqchip} irqchip, guest {setup.guest}; "
        f"profile {result.profile}, backend {result.backend}",
    ]
    if trace.description:
        lines += [f"  {line}" for line in timeline.wrap(" ".join(trace.description.split()))]
    if result.message:
        lines.append(f"  {result.message}")
    if result.mismatches:
        lines += timeline.mismatch_lines(result, "  ")
    return "\n".join(lines)
