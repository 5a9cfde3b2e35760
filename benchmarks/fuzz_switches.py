"""Proof on purpose: with each profile switch flipped, does `kvmtest fuzz --backend kvm` find
a divergence caused by the flip, and shrink it? Prints the markdown table of docs/fuzzing.md.

Usage: nice -n 10 python benchmarks/fuzz_switches.py [--budget N] [--seed S] [--jobs J]

A divergence counts for a switch only if the flip changes the model's prediction of the trace
(kvmtest.fuzz.predict, mainline vs mainline[switch=value]); every shrink step keeps that true,
so a divergence this host shows under mainline too is not credited to the switch.
"""

import argparse
import time

import reference
from kvmtest import suite as runner
from kvmtest.fuzz import run as fz
from kvmtest.fuzz.predict import predict
from kvmtest.fuzz.shrink import size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--shrink-budget", type=int, default=60)
    args = parser.parse_args()
    fz.SHRINK_BUDGET = args.shrink_budget
    context = runner.choose_backend("kvm", True).context
    base = reference.PROFILES["mainline"]
    facts = (context.flavour, context.cpuid_1_eax, context.smm)
    print(
        f"`nice -n 10 python benchmarks/fuzz_switches.py --budget {args.budget} --seed "
        f"{args.seed} --jobs {args.jobs} --shrink-budget {args.shrink_budget}`\n"
    )
    print(
        "| switch | flipped to | found | traces run | divergences (related) | shrunk steps "
        "| shrink candidates | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, value in fz.flips(base):
        flipped = reference.apply_switches(
            base, [f"{name}={reference.profiles.format_value(value, name)}"]
        )

        def relevant(trace, flipped=flipped):
            return predict(trace, base, *facts)[0] != predict(trace, flipped, *facts)[0]

        start = time.perf_counter()
        rep = fz.fuzz(
            args.seed,
            flipped,
            context,
            budget=args.budget,
            jobs=args.jobs,
            coverage=False,
            relevant=relevant,
            max_shrunk=1,
        )
        took = time.perf_counter() - start
        good = [f for f in rep.findings if f.verdict == "reproducible"]
        divergent = sum(v for k, v in rep.statuses.items() if k in ("FAIL", "ERROR"))
        related = len(rep.findings)
        if good:
            found, shrunk, tried = "yes", str(size(good[0].shrunk)), str(good[0].tried)
        elif rep.findings:
            found, shrunk, tried = "flaky only", "-", "-"
        else:
            found, shrunk, tried = "no", "-", "-"
        shown = reference.profiles.format_value(value, name)
        print(
            f"| `{name}` | {shown} | {found} | {rep.traces} | {divergent} ({related}) "
            f"| {shrunk} | {tried} | {took:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
