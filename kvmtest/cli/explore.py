"""`kvmtest explore`: every interleaving of a trace's concurrent block, on the model."""

import sys

import reference
from kvmtest.sim.explore import ExploreError, Explorer, render


def main(args) -> int:
    from kvmtest.host import FLAVOURS, detect_backend
    from kvmtest.trace.errors import TraceError
    from kvmtest.trace.load import load_trace

    if args.profile not in reference.PROFILES:
        known = ", ".join(reference.PROFILES)
        print(f"kvmtest explore: unknown profile {args.profile!r} (known: {known})")
        return 2
    flavour = args.flavour or FLAVOURS.get(detect_backend(), "vmx")
    status, bad_input = 0, False
    for path in args.traces:
        try:
            trace = load_trace(path)
            result = Explorer(trace, args.profile, flavour).run()
        except (TraceError, ExploreError) as exc:  # this file is bad input; the others go on
            print(f"kvmtest explore: {exc}", file=sys.stderr)
            bad_input = True
            continue
        print(render(result))
        if result.violations:
            status = 1
    return 2 if bad_input else status
