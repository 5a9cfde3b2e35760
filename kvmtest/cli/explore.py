"""`kvmtest explore`: every interleaving of a trace's concurrent block, on the model.

It explores the machine `kvmtest run` would replay: the same profile (and --set changes) and
the same host facts (register flavour, SMM, CPUID) from the same probe.
"""

import sys

from kvmtest.sim.explore import ExploreError, Explorer, render

from .errors import EXIT_FAIL, EXIT_PASS, EXIT_USAGE, UsageError
from .profiles import resolve_profile


def main(args) -> int:
    from kvmtest.suite import choose_backend
    from kvmtest.trace.errors import TraceError
    from kvmtest.trace.load import load_trace

    try:
        profile = resolve_profile(args)
    except UsageError as exc:
        print(f"kvmtest explore: {exc}", file=sys.stderr)
        return EXIT_USAGE
    backend = choose_backend("auto", require_kvm=False)
    host = backend.context
    flavour = args.flavour or host.flavour
    status = EXIT_PASS
    try:
        for path in args.traces:
            try:
                trace = load_trace(path)
                explorer = Explorer(trace, profile, flavour, host.smm, host.cpuid_1_eax)
                result = explorer.run()
            except (TraceError, ExploreError) as exc:
                print(f"kvmtest explore: {exc}", file=sys.stderr)
                status = EXIT_USAGE
                continue
            print(render(result))
            if getattr(args, "svg", None):
                from kvmtest.report.svg import explore_svg

                with open(args.svg, "w", encoding="utf-8") as out:
                    out.write(explore_svg(result))
            if result.violations and status == EXIT_PASS:
                status = EXIT_FAIL
    finally:
        if host.kvm is not None:
            host.kvm.close()
    return status
