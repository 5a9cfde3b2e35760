"""Hand-built results for the reporter tests: the reporters are pure functions of these."""

from kvmtest.trace.result import Mismatch, RunSummary, Status, TraceResult

HOST = {"kernel": "6.18.44-fc", "machine": "x86_64", "backend": "kvm_intel"}

HALTED_MISMATCHES = [
    Mismatch(3, "init-while-halted.yaml:17", 1, "mp_state", 3, 0),
    Mismatch(5, "init-while-halted.yaml:21", None, "cs.base", frozenset({0, 0x9F000}), 0xF0000),
]

ALLOWED = {"bsp-first": True, "ap-first": True, "sipi-first": True, "both-lost": False}


def result(name, status, **fields) -> TraceResult:
    base = {
        "path": f"corpus/{name}.yaml",
        "profile": "mainline",
        "backend": "kvm_intel",
        "rules": (3, 7),
    }
    base.update(fields)
    return TraceResult(name=name, status=status, **base)


def summary(results, **fields) -> RunSummary:
    base = {"host": dict(HOST), "profile": "mainline", "backend": "kvm_intel", "elapsed": 0.521}
    base.update(fields)
    return RunSummary(results=results, **base)


def mixed() -> RunSummary:
    """One pass, one fail with two mismatches, one error, one skip."""
    return summary(
        [
            result("msi-init-sipi", Status.PASS, elapsed=0.0012),
            result(
                "init-while-halted",
                Status.FAIL,
                elapsed=0.0034,
                rules=(4, 11, 12),
                mismatches=list(HALTED_MISMATCHES),
            ),
            result(
                "smp-boot",
                Status.ERROR,
                elapsed=0.0008,
                message="GuestError: landing page not reached\n  at stepper.S:40",
            ),
            result("split-irqchip-sipi", Status.SKIP, message="KVM_CAP_SPLIT_IRQCHIP missing"),
        ]
    )


def repeated() -> RunSummary:
    """A concurrent trace run 8 times (one repeat saw a forbidden outcome), then a pass."""
    runs = []
    for repeat in range(8):
        label = "bsp-first" if repeat % 2 else "ap-first"
        status, message = Status.PASS, ""
        if repeat == 5:
            label, status, message = "both-lost", Status.FAIL, "forbidden outcome both-lost"
        runs.append(
            result(
                "concurrent-init",
                status,
                repeat=repeat,
                elapsed=0.001,
                message=message,
                outcomes={label: 1},
                allowed=dict(ALLOWED),
            )
        )
    runs.append(result("msi-init-sipi", Status.PASS, elapsed=0.0012))
    return summary(runs, elapsed=1.5)


ODD = 'odd #1 <trace> & "quotes" \u00e9t\u00e9 \x00\x1b[31m\ud800 ]]>'


def odd() -> RunSummary:
    """Names and messages with '#', markup, accents, control characters and a lone surrogate."""
    return summary(
        [
            result(ODD, Status.PASS),
            result(
                ODD + " fail",
                Status.FAIL,
                mismatches=[Mismatch(0, "x.yaml:1", 0, ODD, ODD, "\x07bell")],
                message="line one\nline # two",
            ),
            result("Subtest: tricky", Status.ERROR, message="# Subtest: x\nok 1 fake"),
            result("skip\nme", Status.SKIP, message="needs #cap\n\u2603 snow"),
        ],
        host={"kernel": ODD, "hostname": "h\x01st"},
    )


def all_skipped() -> RunSummary:
    return summary([result("a", Status.SKIP, message="no KVM"), result("b", Status.SKIP)])


def empty() -> RunSummary:
    return summary([], elapsed=0.0)
