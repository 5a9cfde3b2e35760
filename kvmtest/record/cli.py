"""`kvmtest record`, `kvmtest check` and `kvmtest replay`.

    kvmtest record -o qemu.yaml [--all-ioctls] -- qemu-system-x86_64 -accel kvm -smp 4 ...
    kvmtest check qemu.yaml            # no KVM needed: observations allowed? hazards?
    kvmtest replay qemu.yaml           # the host-side actions on a fresh VM and on the model

Exit codes: record: the VMM's own exit code (2 if nothing could be written); check: 0 clean,
1 findings, 2 bad input; replay: as `kvmtest run`.
"""

from __future__ import annotations

import json
import sys

FORMATS = ("text", "json", "ktap", "junit")


def add_parser(commands) -> None:
    rec = commands.add_parser(
        "record",
        help="run a VMM under ptrace and write its KVM ioctls as a trace",
        description="Run COMMAND (a VMM such as QEMU) under ptrace, stopping only at the KVM "
        "ioctls a trace step stands for (a seccomp filter), and write what each thread did and "
        "saw as a trace file: host-side actions as steps with what each ioctl returned, reads "
        "as observe steps with the values seen, KVM_RUN as guest_ran (inferred by reading "
        "each vCPU's kvm_run page; the VMM's memory is never written). Exit: the VMM's own "
        "exit code, 2 if nothing could be written.",
    )
    rec.add_argument("-o", "--output", required=True, metavar="FILE", help="trace to write")
    rec.add_argument(
        "--all-ioctls",
        action="store_true",
        help="stop at every KVM ioctl, KVM_RUN included (exact guest_ran steps; slower for "
        "guests that exit often)",
    )
    rec.add_argument("--name", help="trace name (default: recording-<command>)")
    rec.add_argument("vmm", nargs="+", metavar="COMMAND", help="the VMM and its arguments")

    check = commands.add_parser(
        "check",
        help="check a recording on the model: allowed observations, VMM hazards (no KVM)",
        description="Run each recording on the reference model: every value the VMM read must "
        "be one the model allows after what the VMM did before it (where guest code ran, "
        "what it can have done is taken into account), and every known VMM hazard is named "
        "with the rule of docs/semantics.md behind it. Exit 0 clean, 1 findings, 2 bad input.",
    )
    check.add_argument("traces", nargs="+", metavar="FILE")
    check.add_argument("--format", choices=FORMATS, default="text")
    _profile_option(check)

    replay = commands.add_parser(
        "replay",
        help="perform a recording's host-side actions on a fresh VM and on the model",
        description="Run each recording as a trace with the kvm backend: its host-side actions "
        "on a fresh VM of this host's KVM and on the model, compared (guest_ran steps are "
        "processing points on KVM; the recorded guest does not run).",
    )
    replay.add_argument("traces", nargs="+", metavar="FILE")
    replay.add_argument("--format", choices=FORMATS, default="text")
    _profile_option(replay)


def _profile_option(parser) -> None:
    parser.add_argument(
        "--profile",
        default="mainline",
        help="kernel profile of the model (kvmtest model --format profiles; default mainline)",
    )


def resolve_profile(args) -> str:
    import reference

    if args.profile not in reference.PROFILES:
        raise SystemExit(
            f"kvmtest {args.command}: unknown profile {args.profile!r} "
            f"(known: {', '.join(reference.PROFILES)})"
        )
    return args.profile


def record_main(argv) -> int:
    """`kvmtest record` on its own: a parser of this module's commands only, so that the VMM
    starts without the imports of the whole command line (kvmtest.cli.main sends it here)."""
    import argparse

    parser = argparse.ArgumentParser(prog="kvmtest")
    add_parser(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return _record(parser.parse_args(argv))


def main(args) -> int:
    if args.command == "record":
        return _record(args)
    if args.command == "check":
        return _check(args)
    return _replay(args)


def _import_the_rest() -> None:
    """What writing the trace needs (construct, the trace format: about 0.2 s), imported in a
    thread while the VMM runs. The recorder's loop waits in waitpid without the GIL; the short
    switch interval lets it take the GIL back quickly at a stop meanwhile."""
    import threading

    def work():
        interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        try:
            import kvmtest.kvm.layouts  # noqa: F401
            import kvmtest.record.convert  # noqa: F401
            import kvmtest.trace.dump  # noqa: F401
        except Exception:  # noqa: BLE001 - imported again, and reported, after the run
            pass
        finally:
            sys.setswitchinterval(interval)

    threading.Thread(target=work, name="kvmtest-imports", daemon=True).start()


def _record(args) -> int:
    import os
    import tempfile

    from .tracer import RecordError, record

    argv = args.vmm[1:] if args.vmm[:1] == ["--"] else args.vmm
    # Written to a file beside the output and renamed at the end: a directory that cannot be
    # written fails before the run, and a failed run leaves an earlier recording as it was.
    try:
        fd, partial = tempfile.mkstemp(
            prefix=".kvmtest-record-", dir=os.path.dirname(os.path.abspath(args.output))
        )
    except OSError as exc:
        print(f"kvmtest record: {args.output}: {exc.strerror}", file=sys.stderr)
        return 2
    with os.fdopen(fd, "w") as out:
        try:
            rec = record(argv, all_ioctls=args.all_ioctls, meanwhile=_import_the_rest)
            from kvmtest.trace import dump_trace

            from .convert import to_trace

            trace = to_trace(rec, args.name)
            out.write(dump_trace(trace))
        except (RecordError, OSError, ValueError) as exc:
            os.unlink(partial)
            print(f"kvmtest record: {exc}", file=sys.stderr)
            return 2
        except BaseException:
            os.unlink(partial)
            raise
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o666 & ~umask)  # as open() would have made it (mkstemp: 0600)
    os.replace(partial, args.output)
    runs = f", {rec.counts.get('KVM_RUN', 0)} KVM_RUN calls" if rec.all_ioctls else ""
    print(
        f"kvmtest record: {len(trace.steps)} steps, {rec.stops} ptrace stops{runs}, "
        f"{trace.setup.vcpus} vCPUs, {rec.duration:.2f} s -> {args.output}",
        file=sys.stderr,
    )
    status = rec.exit_status if rec.exit_status is not None else 1
    return status if status >= 0 else 128 - status


def _load(paths):
    from kvmtest.trace import TraceError, load_trace

    traces = []
    for path in paths:
        try:
            traces.append(load_trace(path))
        except TraceError as exc:
            print(f"{exc}", file=sys.stderr)
            return None
    return traces


def _check(args) -> int:
    from .check import check_trace
    from .report import render_check

    traces = _load(args.traces)
    if traces is None:
        return 2
    profile = resolve_profile(args)
    results = [check_trace(t, profile) for t in traces]
    sys.stdout.write(render_check(results, args.format))
    return 0 if all(r.clean for r in results) else 1


def _replay(args) -> int:
    from kvmtest import suite
    from kvmtest.report import render_json, render_junit, render_ktap, render_text

    traces = _load(args.traces)
    if traces is None:
        return 2
    profile = resolve_profile(args)
    backend = suite.choose_backend("kvm", require_kvm=True)
    print(f"kvmtest replay: {backend.banner}", file=sys.stderr)
    if backend.unusable:
        return 1
    results = [suite.run_one(t, profile, backend.context) for t in traces]
    summary = suite.summarize(results, backend.host, profile, backend.name, 0.0)
    render = {
        "text": render_text,
        "json": render_json,
        "ktap": render_ktap,
        "junit": render_junit,
    }[args.format]
    out = render(summary)
    sys.stdout.write(out if isinstance(out, str) else json.dumps(out))
    return summary.exit_code
