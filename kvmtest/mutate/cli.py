"""`kvmtest mutate`: arguments, the campaign, the report."""

from __future__ import annotations

import argparse
import fnmatch
import shlex
import sys

EXIT_USAGE = 2  # as kvmtest.cli.errors has it (tools sit below cli)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "mutate",
        help="mutation testing: single-rule mutants of the model against the corpus on KVM",
        description="Make single-rule mutants of the reference model (every switch of the "
        "profile flipped; AST edits of reference/machine.py, regs.py and encodings.py), "
        "predict the corpus under each in a fresh interpreter, replay on KVM the traces whose "
        "prediction changed, and print the score and the survivors. See docs/mutation.md.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="traces (default: the corpus)")
    parser.add_argument("--profile", default="mainline", help="the host's profile (mainline)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="GLOB",
        help="only mutants whose id matches (switch:*, machine:12, regs:*; repeatable)",
    )
    parser.add_argument(
        "--every",
        type=int,
        default=1,
        metavar="N",
        help="a deterministic sample: every N-th code mutant of each module (all switches)",
    )
    parser.add_argument(
        "--before",
        metavar="FILE",
        help="trace names (one a line) of an earlier corpus: its score is reported too "
        "(kvmtest/mutate/original_corpus.txt: the corpus before the mutation work)",
    )
    parser.add_argument("--no-code", action="store_true", help="switch mutants only")
    parser.add_argument("--no-switches", action="store_true", help="code mutants only")
    parser.add_argument("--probes", type=int, default=100, help="directed probe traces (100)")
    parser.add_argument(
        "--strategies", type=int, default=50, help="Hypothesis-strategy probe traces (50)"
    )
    parser.add_argument("-j", "--jobs", type=int, default=1, help="workers at once (1)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant (120)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the report as Markdown")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-mutant progress")
    return parser


def main(args) -> int:
    from kvmtest.suite import choose_backend

    from . import mutants as m
    from . import report, runner

    backend = choose_backend("kvm", True)
    if backend.unusable:
        print(f"kvmtest mutate: needs KVM: {backend.unusable}", file=sys.stderr)
        return EXIT_USAGE
    chosen = ([] if args.no_switches else m.switch_mutants(args.profile)) + (
        [] if args.no_code else m.code_mutants()
    )
    if args.every > 1:
        chosen = [x for x in chosen if x.kind != "code" or x.spec["index"] % args.every == 0]
    if args.only:
        chosen = [x for x in chosen if any(fnmatch.fnmatch(x.id, g) for g in args.only)]
    if not chosen:
        print("kvmtest mutate: no mutant selected", file=sys.stderr)
        return EXIT_USAGE
    done = [0]

    def progress(verdict) -> None:
        done[0] += 1
        if not args.quiet:
            print(
                f"[{done[0]}/{len(chosen)}] {verdict.mutant.id}: {verdict.category}",
                file=sys.stderr,
                flush=True,
            )

    campaign = runner.run(
        chosen,
        profile=args.profile,
        context=backend.context,
        corpus_paths=args.paths,
        before=_names(args.before) if args.before else None,
        probes=args.probes,
        strategies=args.strategies,
        jobs=args.jobs,
        timeout=args.timeout,
        progress=progress,
    )
    campaign.command = "kvmtest mutate " + shlex.join(sys.argv[2:])
    print(report.text(campaign), end="")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write(report.markdown(campaign))
    return 0


def _names(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip() and not line.startswith("#")]
