"""Hostile trace files: whatever the bytes, the loader returns a Trace or raises TraceError with
the file and a line >= 1, quickly and in bounded memory; the command line exits 2 with
"file:line: reason" on stderr and never a traceback.

The inputs come from a seeded generator (reproducible: the failing input's index and seed are in
the message): mutations of the corpus traces (structural: values replaced by values of the wrong
type, keys dropped or added; textual: YAML snippets spliced into a line, duplicate keys, alias
bombs, bad tags, deep nesting, invalid UTF-8, control characters, random bytes, truncation) and
traces made from a small grammar of the format with hostile values mixed in.
KVMTEST_FUZZ_INPUTS and KVMTEST_FUZZ_SEED run more (or other) inputs.
"""

import glob
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

from kvmtest import ops as f
from kvmtest.suite import corpus_dir
from kvmtest.trace.errors import TraceError
from kvmtest.trace.load import load_trace

INPUTS = int(os.environ.get("KVMTEST_FUZZ_INPUTS", "10000"))
SEED = int(os.environ.get("KVMTEST_FUZZ_SEED", "20240611"))
PER_INPUT_SECONDS = 2.0
MEMORY_GROWTH_MB = 400

CORPUS = [open(p, encoding="utf-8").read() for p in sorted(glob.glob(f"{corpus_dir()}/*.yaml"))]
DATA = [yaml.load(text, Loader=yaml.CSafeLoader) for text in CORPUS]

# Values spliced in as YAML text.
SNIPPETS = [
    "9" * 5000,
    "-" + "9" * 31,
    "0x" + "f" * 40,
    "0b" + "1" * 70,
    "1" + ":59" * 300,
    "1e400",
    "-.inf",
    ".nan",
    "~",
    "null",
    "yes",
    "off",
    "-0",
    "0o17",
    "017",
    "1_000",
    "2001-13-45",
    "2001-02-30 25:61:00",
    "2001-12-14t21:59:43.10-05:00",
    "!!int zz",
    "!!int 0x" + "f" * 100,
    "!!float zz",
    "!!float",
    "!!timestamp zz",
    "!!binary '@@@'",
    "!!binary aGVsbG8=",
    "!!bool maybe",
    "!!null x",
    "!!str",
    "!!set {a, b}",
    "!!set [a]",
    "!!omap [a: 1, b: 2]",
    "!!omap {a: 1}",
    "!!pairs [a: 1, a: 2]",
    "!!map x",
    "!!seq x",
    "!!merge x",
    "!foo bar",
    "!<tag:yaml.org,2002:int> 12",
    "!!python/object:os.system ls",
    "!!python/name:os.system",
    "&" + "a" * 2000 + " x",
    "*undefined",
    "&x [*x]",
    "&x {a: *x}",
    "'__line__'",
    "{__line__: 1}",
    '"\\x00"',
    '"\\uffff\\ud800"',
    "''",
    "[" * 600 + "]" * 600,
    "{a: " * 200 + "1" + "}" * 200,
    "[" * 40 + "]" * 40,
    "{a: 1, a: 2}",
    "{1: a, b: c}",
    "{true: a, 1: b}",
    "{[1]: a}",
    "{? [a] : b}",
    "[[rip]]",
    "[rip, 1]",
    "[rip, [rip]]",
    "[]",
    "{}",
    "[true]",
    "[-1]",
    "[0, 0]",
    "[0, 1]",
    "{vcpu: 0}",
    "{vcpus: []}",
    "{vcpus: [], expect: {mp_state: 0}}",
    "{vcpus: [0, 1], expect: {true: {mp_state: 0}}}",
    "{vcpu: 1, fields: [[a]]}",
    "{vcpu: 0, value: 0x500, dest: 1}",
    "{vcpu: 0, read: []}",
    "{<<: {a: 1}, a: 2}",
    "[mainline, nonsense]",
    "'x' " * 30,
    '"' + "\\t" * 100 + '"',
    "|\n  block\n  scalar",
    ">-\n  folded",
    "? complex\n: key",
    "- a\n- b",
    "a: b: c",
    "%YAML 1.1",
    "--- \n...",
    "@",
    "`",
    "\t",
]

BOMB = "bomb: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"b{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)
)

KEYS = [
    "name",
    "steps",
    "setup",
    "vcpus",
    "vcpu",
    "expect",
    "fields",
    "read",
    "profiles",
    "pinned_profiles",
    "tags",
    "rules",
    "requires",
    "__line__",
    "<<",
    "concurrently",
    "thread",
    "value",
    "dest",
    "delivery",
    "smp_boot",
]


def hostile_value(rng: random.Random, depth: int = 0):
    """A Python value for structural mutations (yaml.dump writes it)."""
    pick = rng.randrange(14)
    if pick == 0:
        return rng.choice([None, True, False, 0, -1, 1, 2, 63, 64, 255, 256, 1 << 64, -(1 << 70)])
    if pick == 1:
        return rng.choice([1.5, float("inf"), float("nan"), -0.0, 1e300])
    if pick == 2:
        return rng.choice(["", "x", "RUNNABLE", "init", "host", "stepper", "a" * 500, "\u2028"])
    if pick == 3 and depth < 4:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if pick == 4 and depth < 4:
        return {rng.choice(KEYS): hostile_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if pick == 5:
        return {rng.choice([1, "a", True, None, 2.5]): rng.randrange(3) for _ in range(3)}
    if pick == 6:
        return rng.randrange(-(1 << 70), 1 << 70)
    if pick == 7:
        return [[rng.randrange(3)]] * rng.randrange(1, 4)
    if pick == 8:
        return rng.choice([list(f.MP_STATES), list(f.READS), sorted(f.ALL_FIELDS)[:5]])
    return rng.choice([0, 1, "mp_state", "rip", [0], [0, 1], {"vcpu": 0}, {}, []])


def mutate_structure(rng: random.Random, data):
    """Replace, drop or add one node somewhere in a corpus trace's data."""
    data = yaml.load(yaml.dump(data, Dumper=yaml.CSafeDumper), Loader=yaml.CSafeLoader)
    for _ in range(rng.randrange(1, 4)):
        node, path = data, []
        while isinstance(node, (dict, list)) and node and rng.random() < 0.7:
            key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
            path.append((node, key))
            node = node[key]
        if not path:
            data = hostile_value(rng)
            break
        parent, key = path[-1]
        action = rng.randrange(4)
        if action == 0 and isinstance(parent, dict):
            del parent[key]
        elif action == 1 and isinstance(parent, dict):
            parent[rng.choice(KEYS)] = hostile_value(rng)
        elif action == 2 and isinstance(parent, list):
            parent.append(rng.choice(parent))
        else:
            parent[key] = hostile_value(rng)
    return yaml.dump(data, Dumper=yaml.CSafeDumper, default_flow_style=rng.choice([None, True]))


def mutate_text(rng: random.Random, text: str) -> bytes:
    lines = text.split("\n")
    for _ in range(rng.randrange(1, 4)):
        lines = lines or [""]
        i = rng.randrange(len(lines))
        line = lines[i]
        action = rng.randrange(12)
        if action <= 2 and ": " in line:  # a value replaced by a snippet
            lines[i] = line[: line.index(": ") + 2] + rng.choice(SNIPPETS)
        elif action == 3:  # a duplicate line (often a duplicate key)
            lines.insert(i, line)
        elif action == 4:  # a new key
            indent = line[: len(line) - len(line.lstrip())]
            lines.insert(i, f"{indent}{rng.choice(KEYS)}: {rng.choice(SNIPPETS)}")
        elif action == 5:  # a line deleted or two swapped
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            if rng.random() < 0.5:
                del lines[i]
        elif action == 6:  # an alias bomb, referenced somewhere
            bomb = BOMB.split("\n")
            lines = bomb + lines
            if ": " in line:
                lines[len(bomb) + i] = line[: line.index(": ") + 2] + "*a9"
        elif action == 7:  # control characters and odd Unicode
            ch = rng.choice(["\x00", "\x07", "\x1b", "\x7f", "\ufeff", "\u2028", "\r", "\x85"])
            pos = rng.randrange(len(line) + 1)
            lines[i] = line[:pos] + ch + line[pos:]
        elif action == 8:  # deep nesting
            depth = rng.choice([30, 33, 100, 1000, 5000])
            lines.insert(i, "deep: " + "[" * depth + "]" * depth)
        elif action == 9:  # truncated
            lines = lines[: i + 1]
            lines[i] = line[: rng.randrange(len(line) + 1)]
        elif action == 10:  # indentation broken
            lines[i] = rng.choice(["", " ", "\t", "   "]) + line
        else:  # a mapping made a sequence or the reverse
            lines[i] = line.replace(": ", ": - ", 1) if rng.random() < 0.5 else "- " + line
    data = "\n".join(lines).encode("utf-8", errors="surrogatepass")
    return mutate_bytes(rng, data) if rng.random() < 0.15 else data


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        pos = rng.randrange(len(data) + 1)
        action = rng.randrange(4)
        if action == 0 and pos < len(data):
            data[pos] = rng.randrange(256)
        elif action == 1:
            data[pos:pos] = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])
        elif action == 2:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        else:
            del data[pos : pos + rng.randrange(1, 10)]
    return bytes(data)


def grammar_trace(rng: random.Random) -> str:
    """A trace from the format's grammar, each value good or hostile."""

    def value(good):
        return rng.choice(good) if rng.random() < 0.85 else rng.choice(SNIPPETS)

    vcpus = rng.choice([1, 2, 3, 4, 64])
    guest = value(["none", "stepper", "smp-boot"])
    vcpu = ["0", "1", str(vcpus - 1)]

    def step(nested=False):
        kind = rng.choice(
            ["msi", "icr", "observe", "get_mp_state", "set_mp_state", "set_vcpu_events", "smi"]
            + ["nmi", "set_lapic", "start", "hlt", "x2apic", "spin", "report", "smp_boot"]
            + ([] if nested else ["concurrently"])
        )
        if kind == "msi":
            body = f"{{dest: {value(vcpu)}, delivery: {value(['init', 'sipi', 'fixed', '5'])}}}"
        elif kind == "icr":
            extra = value(["", ", value: 0x4500", ", vector: 0x10", ", shorthand: all"])
            body = f"{{vcpu: {value(vcpu)}, delivery: {value(['init', 'sipi'])}{extra}}}"
        elif kind == "observe":
            expect = value(["", ", expect: {mp_state: RUNNABLE}", ", expect: {rip: 0xfff0}"])
            fields = value(["", ", fields: [mp_state]", ", fields: [rip, cs.selector]"])
            body = f"{{vcpu: {value(vcpu)}{fields}{expect}}}"
        elif kind == "set_mp_state":
            body = f"{{vcpu: {value(vcpu)}, state: {value(['RUNNABLE', 'INIT_RECEIVED', '3'])}}}"
        elif kind == "set_vcpu_events":
            body = f"{{vcpu: {value(vcpu)}, sipi_vector: {value(['0x10', '0', '255'])}}}"
        elif kind == "spin":
            body = f"{{vcpu: {value(vcpu)}, iterations: {value(['0', '10', '100000'])}}}"
        elif kind == "smp_boot":
            body = value(["{}", "{broadcast: true}", "{vector: 0x10}", "{broadcast: false}"])
        elif kind == "concurrently":
            branches = [
                f"{{thread: {value(['host', *vcpu])}, steps: [{', '.join(step(True) for _ in range(rng.randrange(1, 3)))}]}}"  # noqa: E501
                for _ in range(rng.randrange(1, 4))
            ]
            body = f"[{', '.join(branches)}]"
        else:
            body = value(vcpu)
        return f"{{{kind}: {body}}}"

    lines = [f"name: {value(['a', 'trace-1', 'x.y_z'])}"]
    for key, good in (
        ("profiles", ["[]", "[mainline]", "[linux-6.1, linux-3.9]"]),
        ("pinned_profiles", ["[mainline]", "[]"]),
        ("rules", ["[1, 12, d7.3]", "[]"]),
        ("tags", ["[a, b]", "[]"]),
        ("requires", ["[smm]", "[]"]),
        ("description", ["free text", ">\n  folded"]),
    ):
        if rng.random() < 0.3:
            lines.append(f"{key}: {value(good)}")
    lines.append(f"setup: {{vcpus: {vcpus}, guest: {guest}, apic: {value(['xapic', 'x2apic'])}}}")
    lines.append("steps:")
    lines += [f"  - {step()}" for _ in range(rng.randrange(0, 6))]
    if rng.random() < 0.2:
        lines.insert(rng.randrange(1, len(lines) + 1), rng.choice(lines))
    return "\n".join(lines) + "\n"


def hostile_input(rng: random.Random) -> bytes:
    pick = rng.random()
    if pick < 0.30:
        return mutate_text(rng, rng.choice(CORPUS))
    if pick < 0.50:
        return mutate_structure(rng, rng.choice(DATA)).encode()
    if pick < 0.85:
        text = grammar_trace(rng)
        return mutate_text(rng, text) if rng.random() < 0.3 else text.encode()
    if pick < 0.92:
        return mutate_bytes(rng, rng.choice(CORPUS).encode())
    return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))


def check_one(path: str) -> tuple[str | None, bool]:
    """(what went wrong or None, whether it loaded as a trace)."""
    try:
        trace = load_trace(path)
    except TraceError as exc:
        if exc.path != path or not isinstance(exc.line, int) or exc.line < 1:
            return f"TraceError without file and line: {exc!r}"[:500], False
        if len(exc.reason) > 600 or "\n" in str(exc):
            return f"unbounded or multi-line message ({len(exc.reason)} chars): {exc!s:.300}", False
        return None, False
    except BaseException as exc:  # exactly what must never happen
        return f"{type(exc).__name__}: {str(exc)[:300]}", False
    return (None, True) if isinstance(trace, f.Trace) else (f"returned {trace!r:.100}", False)


def scratch_dir(tmp_path) -> str:
    """Where to write the inputs: tmpfs when there is one (writing is most of the cost)."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return tempfile.mkdtemp(prefix="kvmtest-fuzz-", dir="/dev/shm")
    return str(tmp_path)


def test_loader_survives_hostile_inputs(tmp_path):
    rng = random.Random(SEED)
    scratch = scratch_dir(tmp_path)
    path = os.path.join(scratch, "hostile.yaml")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
    failures, loaded, slowest = [], 0, 0.0
    try:
        start = time.perf_counter()
        for index in range(INPUTS):
            data = hostile_input(rng)
            with open(path, "wb") as stream:
                stream.write(data)
            t0 = time.perf_counter()
            problem, ok = check_one(path)
            elapsed = time.perf_counter() - t0
            slowest = max(slowest, elapsed)
            if elapsed > PER_INPUT_SECONDS:
                problem = problem or f"took {elapsed:.1f} s"
            if problem:
                failures.append(f"input {index} (seed {SEED}): {problem}\n    {data[:200]!r}")
            loaded += ok
        total = time.perf_counter() - start
    finally:
        if scratch != str(tmp_path):
            shutil.rmtree(scratch)
    rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10) - rss_before
    print(
        f"\n{INPUTS} hostile inputs in {total:.1f} s ({loaded} loaded as traces), slowest "
        f"{slowest * 1000:.0f} ms, peak RSS growth {rss_growth} MB"
    )
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:10])
    assert rss_growth < MEMORY_GROWTH_MB
    # The generator must really be hostile, and not only: some inputs still load.
    assert 0 < loaded < INPUTS * 0.5


def kvmtest(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kvmtest", *args], capture_output=True, text=True, timeout=120
    )


def test_command_line_reports_hostile_files_cleanly(tmp_path):
    rng = random.Random(SEED + 1)
    paths = []
    while len(paths) < 40:
        path = str(tmp_path / f"h{len(paths):02d}.yaml")
        with open(path, "wb") as stream:
            stream.write(hostile_input(rng))
        if not check_one(path)[1]:  # only files that must be refused
            paths.append(path)
    good = str(tmp_path / "zz-good.yaml")
    with open(good, "w") as stream:
        stream.write("name: zz-good\nsteps: [{observe: 0}]\n")
    for command in (["list"], ["run", "--backend", "reference"]):
        result = kvmtest(*command, *paths, good)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        prefix = f"kvmtest {command[0]}: "
        errors = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
        assert len(errors) == len(paths), result.stderr[-3000:]
        for path in paths:
            assert any(line.startswith(f"{prefix}{path}:") for line in errors), path
            line = next(x for x in errors if x.startswith(f"{prefix}{path}:"))
            assert line[len(prefix) + len(path) + 1 :].split(":")[0].isdigit(), line
        assert "zz-good" in result.stdout  # the good file still ran
    for path in paths[:3]:
        for command in (["list"], ["run", "--backend", "reference"]):
            result = kvmtest(*command, path)
            assert result.returncode == 2 and "Traceback" not in result.stderr
            assert f"{path}:" in result.stderr
