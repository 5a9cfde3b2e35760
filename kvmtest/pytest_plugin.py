"""kvmtest as a pytest plugin: every trace is a test item.

Installed with kvmtest (entry point group ``pytest11``) and therefore loaded by every pytest run
in the environment, it does nothing unless asked:

    pytest --kvmtest                      the built-in corpus
    pytest --kvmtest PATH...              the traces under PATH (files or directories)
    [tool.pytest.ini_options] kvmtest_paths = ["traces"]   the same from the ini file

It then claims only YAML files under those paths that are kvmtest traces (a mapping with
``name`` and ``steps``), never another project's YAML. Each trace is an item: ``runtest``
replays it (kvmtest.suite.run_one, the same path as ``kvmtest run``), a mismatch fails it and
``repr_failure`` is the text report's diff, ``reportinfo`` points at the trace's file:line.
A trace that does not apply, lacks a capability or has nothing to check is skipped with the
reason; without usable KVM every trace is skipped (``--kvmtest-backend kvm`` or
KVMTEST_REQUIRE_KVM=1: failed).

Options: ``--kvmtest-backend auto|kvm|reference``, ``--kvmtest-profile P`` (default: from
this host's kernel release, so that under ``pytest-xdist --dist each`` every host is judged by
its own profile), ``--kvmtest-timeout S``. Markers ``kvm``, ``smm``, ``x2apic``, ``guest`` and
``race`` are put on the items (``-m "not race"``). The session fixture ``kvmtest_backend`` is
the backend the items use: /dev/kvm is opened once per process, so once per xdist worker.
Items are collected in sorted order, the same on every worker.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MARKERS = {
    "kvm": "needs a working /dev/kvm (skips without it unless KVMTEST_REQUIRE_KVM=1)",
    "smm": "kvmtest trace: needs KVM's SMM support",
    "x2apic": "kvmtest trace: uses x2APIC",
    "guest": "kvmtest trace: runs guest code (stepper or smp-boot image)",
    "race": "kvmtest trace: has a concurrent block (outcome judged against the model's set)",
}
SUFFIXES = (".yaml", ".yml")
_STATE = pytest.StashKey["_Session"]()


def pytest_addoption(parser):
    group = parser.getgroup("kvmtest", "kvmtest traces as tests")
    group.addoption(
        "--kvmtest",
        action="store_true",
        default=False,
        help="collect kvmtest traces: those under the PATH arguments, or the built-in corpus",
    )
    group.addoption(
        "--kvmtest-backend",
        choices=("auto", "kvm", "reference"),
        default="auto",
        help="kvm: real VMs; reference: the model alone; auto (default): kvm where usable, "
        "otherwise every trace is skipped",
    )
    group.addoption("--kvmtest-profile", default=None, help="model profile (default: from uname)")
    group.addoption(
        "--kvmtest-timeout", type=float, default=60.0, help="per-trace timeout in seconds (60)"
    )
    parser.addini("kvmtest_paths", "kvmtest trace files or directories to collect", "paths")


def pytest_configure(config):
    known = {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}
    for name, text in MARKERS.items():
        if name not in known:
            config.addinivalue_line("markers", f"{name}: {text}")
    roots = _roots(config)
    if roots is None:
        return
    config.stash[_STATE] = _Session(config, roots)


def _roots(config) -> list | None:
    """The trace roots, or None when the plugin was not asked for."""
    ini = [Path(p) for p in config.getini("kvmtest_paths") or ()]
    if not config.getoption("kvmtest") and not ini:
        return None
    from kvmtest.suite import corpus_dir

    explicit = config.args_source == pytest.Config.ArgsSource.ARGS
    if config.getoption("kvmtest"):
        if explicit:
            roots = [Path(arg.split("::")[0]) for arg in config.args]
        else:
            roots = ini or [Path(corpus_dir())]
            config.args[:] = [str(r) for r in roots]
    else:
        roots = ini
    return sorted({Path(os.path.abspath(r)) for r in roots})


def pytest_unconfigure(config):
    state = config.stash.get(_STATE, None)
    if state is not None:
        state.close()


def pytest_report_header(config):
    state = config.stash.get(_STATE, None)
    if state is None:
        return None
    return f"kvmtest: traces from {', '.join(map(str, state.roots))}"


def pytest_collect_file(file_path: Path, parent):
    state = parent.config.stash.get(_STATE, None)
    if state is None or file_path.suffix not in SUFFIXES or not state.claims(file_path):
        return None
    return TraceFile.from_parent(parent, path=file_path)


def pytest_collection_modifyitems(session, config, items):
    """Trace items in sorted order (by node id) in the slots they hold: every xdist worker
    then collects the same items in the same order, whatever the file system's order."""
    slots = [i for i, item in enumerate(items) if isinstance(item, TraceItem)]
    ordered = sorted((items[i] for i in slots), key=lambda item: item.nodeid)
    for slot, item in zip(slots, ordered, strict=True):
        items[slot] = item


@pytest.fixture(scope="session")
def kvmtest_backend(request):
    """The kvmtest backend of this process (kvmtest.suite.Backend): /dev/kvm opened once."""
    state = request.config.stash.get(_STATE, None)
    if state is None:
        state = request.config.stash[_STATE] = _Session(request.config, [])
    return state.backend()


class _Session:
    """Per-process plugin state: the trace roots, and the backend opened on first use."""

    def __init__(self, config, roots):
        self.config = config
        self.roots = roots
        self._backend = None
        self._profile = None

    def claims(self, path: Path) -> bool:
        path = Path(os.path.abspath(path))
        if not any(path == root or root in path.parents for root in self.roots):
            return False
        return _looks_like_a_trace(path)

    def backend(self):
        if self._backend is None:
            from kvmtest import suite

            require = os.environ.get("KVMTEST_REQUIRE_KVM") == "1"
            requested = self.config.getoption("kvmtest_backend")
            self._backend = suite.choose_backend(requested, require)
        return self._backend

    def profile(self) -> str:
        if self._profile is None:
            import reference
            from kvmtest.host import default_profile

            chosen = self.config.getoption("kvmtest_profile")
            if chosen and chosen not in reference.PROFILES:
                known = ", ".join(reference.PROFILES)
                raise pytest.UsageError(f"--kvmtest-profile {chosen!r}: known: {known}")
            if not chosen:
                kernel = self.backend().host.get("kernel", "")
                try:
                    chosen = default_profile(kernel)
                except Exception as exc:  # reference.ModelError: no profile covers the release
                    pytest.fail(
                        f"no model profile for kernel {kernel}: {exc} (--kvmtest-profile "
                        "chooses one)",
                        pytrace=False,
                    )
            self._profile = chosen
        return self._profile

    def close(self) -> None:
        if self._backend is not None and self._backend.context.kvm is not None:
            self._backend.context.kvm.close()
            self._backend.context.kvm = None


def _looks_like_a_trace(path: Path) -> bool:
    """A YAML mapping with top-level `name` and `steps` keys (read without a YAML parser)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    keys = {line.split(":", 1)[0] for line in text.splitlines() if line[:1].isalpha()}
    return {"name", "steps"} <= keys


class TraceFile(pytest.File):
    def collect(self):
        from kvmtest.trace.errors import TraceError
        from kvmtest.trace.load import load_trace

        try:
            trace = load_trace(str(self.path))
        except TraceError as exc:
            raise self.CollectError(str(exc)) from None
        yield TraceItem.from_parent(self, name=trace.name, trace=trace)


class TraceFailure(Exception):
    """A trace that failed or errored: carries its TraceResult for repr_failure."""

    def __init__(self, result):
        super().__init__(result.message)
        self.result = result


class TraceItem(pytest.Item):
    def __init__(self, *, trace, **kwargs):
        super().__init__(**kwargs)
        self.trace = trace
        judged_by_kvm = self.config.getoption("kvmtest_backend") != "reference"
        for marker in trace_markers(trace, kvm=judged_by_kvm):
            self.add_marker(marker)

    def runtest(self):
        from kvmtest import suite
        from kvmtest.trace.result import Status

        state = self.config.stash[_STATE]
        backend = state.backend()
        profile = state.profile()
        self.user_properties.append(("profile", profile))
        self.user_properties.append(("backend", backend.name))
        if backend.unusable:
            (result,) = suite.unjudged_results([self.trace], profile, backend)
        else:
            timeout = self.config.getoption("kvmtest_timeout")
            result = suite.run_one(self.trace, profile, backend.context, timeout=timeout)
        if result.status is Status.SKIP:
            pytest.skip(result.message or "skipped")
        if result.status is not Status.PASS:
            raise TraceFailure(result)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, TraceFailure):
            from kvmtest.report.text import render_result

            return render_result(excinfo.value.result, verbose=True)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, max(self.trace.line - 1, 0), f"kvmtest trace {self.trace.name}"


def trace_markers(trace, kvm: bool = True) -> list:
    """The markers of a trace item (names in MARKERS); `kvm` unless the model alone runs."""
    from kvmtest import ops as f

    names = ["kvm"] if kvm else []
    if trace.setup.guest != "none" or any(isinstance(s, f.GuestCommand) for s in trace.steps):
        names.append("guest")
    if "smm" in trace.requires or any(isinstance(s, f.Smi) for s in trace.steps):
        names.append("smm")
    if trace.setup.apic == "x2apic" or "x2apic" in trace.requires:
        names.append("x2apic")
    if any(isinstance(s, f.Concurrently) for s in trace.steps):
        names.append("race")
    return [getattr(pytest.mark, name) for name in names]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skipped trace's location is the trace file's line, not this plugin's."""
    outcome = yield
    report = outcome.get_result()
    if isinstance(item, TraceItem) and report.skipped and isinstance(report.longrepr, tuple):
        report.longrepr = (str(item.path), item.trace.line or 1, report.longrepr[2])
