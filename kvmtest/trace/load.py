"""Reading trace files: YAML in, format.Trace out, or a TraceError naming file and line.

Every mapping the YAML builds is a _Map that keeps the line it started on and the line of each
of its keys (attributes, so no key a user writes can collide with them), so each complaint can
point at the exact place. Unknown keys and duplicate keys are errors, not silently ignored: a
typo in a trace must never turn a check into no check.

The input is hostile until proven otherwise: only regular files are read, and only up to
MAX_BYTES; the YAML's nesting depth, its size once aliases are expanded and the digits of any
integer are bounded before anything is built from them; and an error message quotes at most
EXCERPT characters of any value. Whatever the input, the loader raises TraceError and nothing
else (tests/trace/test_hostile_inputs.py feeds it thousands of hostile files).
"""

import dataclasses
import errno
import os
import re
import reprlib
import stat

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.resolver import Resolver

try:  # libyaml's scanner and parser: about six times faster than PyYAML's own
    from yaml._yaml import CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    CParser = None

from kvmtest import ops as f

from .errors import TraceError

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")
RULE_PATTERN = re.compile(r"\d{1,2}|d7\.\d{1,2}|d8\.\d")
REQUIREMENTS = ("smm", "x2apic", "split-irqchip")
GUEST_COMMANDS = ("start", "hlt", "x2apic", "spin", "report")
# What the explorer and the kvm side can run inside a concurrently block.
CONCURRENT_KINDS = f.BLOCK_OPS

# Limits on what one trace file may ask of the loader (docs/traces.md "Limits").
MAX_BYTES = 1 << 20  # file size
MAX_DEPTH = 32  # nesting of YAML collections, aliases expanded (a real trace needs about 10)
MAX_NODES = 20_000  # YAML nodes, aliases expanded; a scalar counts one per 64 characters
MAX_INT_DIGITS = 30  # no value in a trace needs more than 64 bits
EXCERPT = 80  # characters of a value quoted in an error message


class _Refused(ConstructorError):
    """A YAML document the loader will not build (a limit, a duplicate key): said as it is,
    without the "not valid YAML" of a syntax error."""

    def __init__(self, problem: str, mark):
        super().__init__(None, None, problem, mark)


class _Map(dict):
    """A YAML mapping: `line` where it starts, `key_lines` where each key is."""

    line = 1
    key_lines: dict = {}


class _Seq(list):
    """A YAML sequence: `line` where it starts, `item_lines` where each item starts."""

    line = 1
    item_lines: list = []


if CParser is not None:

    class _Base(Composer, CParser, SafeConstructor, Resolver):
        """libyaml's events, PyYAML's composer (bounded below) and safe constructor."""

        def __init__(self, stream):
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

else:  # pragma: no cover
    _Base = yaml.SafeLoader


class _Composer(_Base):
    """A safe loader with bounded nesting, duplicate-key errors and line-carrying collections."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):
        # The pure-Python composer recurses once per level: refuse deep nesting before Python's
        # recursion limit does. Every node counts, so a document is bounded before it is built.
        event = self.peek_event()
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES} YAML nodes", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"YAML nested deeper than {MAX_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # int('zz'), datetime(2001, 13, 1), a bad base64 ...
            tag = node.tag.rsplit(":", 1)[-1] if isinstance(node.tag, str) else "?"
            value = node.value if isinstance(node, ScalarNode) else ""
            raise _Refused(
                f"invalid !!{_clip(tag, 20)} value {_excerpt(value)}: {_clip(str(exc), 60)}",
                node.start_mark,
            ) from None

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node)
        digits = re.sub(r"^[-+]?(0[xob])?|[_:]", "", str(text))
        if len(digits) > MAX_INT_DIGITS:
            raise _Refused(
                f"integer with more than {MAX_INT_DIGITS} digits ({_excerpt(text)})",
                node.start_mark,
            )
        return super().construct_yaml_int(node)

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, MappingNode):
            return super().construct_mapping(node, deep=deep)
        return self._pairs(node, deep)[0]

    def _pairs(self, node, deep) -> tuple[dict, dict]:
        """(mapping, line of each key); a key given twice is an error naming both lines."""
        merge = "tag:yaml.org,2002:merge"
        lines: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == merge:
                continue  # merged keys may be overridden: that is what << means
            key = self._key(key_node)
            if key in lines:
                raise _Refused(
                    f"duplicate key {_excerpt(key)} (lines {lines[key]} and "
                    f"{key_node.start_mark.line + 1})",
                    key_node.start_mark,
                )
            lines[key] = key_node.start_mark.line + 1
        self.flatten_mapping(node)
        mapping = {}
        for key_node, value_node in node.value:
            key = self._key(key_node)
            mapping[key] = self.construct_object(value_node, deep=deep)
            lines.setdefault(key, key_node.start_mark.line + 1)
        return mapping, lines

    def _key(self, key_node):
        key = self.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise _Refused("a mapping key must be a scalar", key_node.start_mark) from None
        return key

    def construct_yaml_map(self, node):
        if not isinstance(node, MappingNode):
            raise _Refused(f"!!map on a {node.id}", node.start_mark)
        data = _Map()
        data.line = node.start_mark.line + 1
        yield data
        mapping, data.key_lines = self._pairs(node, False)
        data.update(mapping)

    def construct_yaml_seq(self, node):
        if not isinstance(node, SequenceNode):
            raise _Refused(f"!!seq on a {node.id}", node.start_mark)
        data = _Seq()
        data.line = node.start_mark.line + 1
        data.item_lines = [n.start_mark.line + 1 for n in node.value]
        yield data
        data.extend(self.construct_sequence(node))


_Composer.add_constructor("tag:yaml.org,2002:int", _Composer.construct_yaml_int)
_Composer.add_constructor("tag:yaml.org,2002:map", _Composer.construct_yaml_map)
_Composer.add_constructor("tag:yaml.org,2002:seq", _Composer.construct_yaml_seq)


def _check_graph(root) -> None:
    """Refuse a node graph that is cyclic, or too deep or too big once aliases are expanded
    (an alias bomb is a few hundred bytes that expand to billions of nodes). Iterative, linear
    in the number of distinct nodes."""
    done: dict = {}  # id(node) -> (expanded size, depth)
    on_path: set = set()
    shared = False
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        children = _children(node)
        if finished:
            on_path.discard(key)
            size = 1 + sum(done[id(c)][0] for c in children)
            if isinstance(node, ScalarNode):
                size += len(node.value) // 64
            depth = 1 + max((done[id(c)][1] for c in children), default=0)
            if size > MAX_NODES:
                what = "YAML aliases expand" if shared else "the YAML has"
                raise _Refused(f"{what} beyond {MAX_NODES} nodes", node.start_mark)
            if depth > MAX_DEPTH:
                raise _Refused(
                    f"YAML aliases nest deeper than {MAX_DEPTH} levels",
                    node.start_mark,
                )
            done[key] = (size, depth)
            continue
        if key in done:
            shared = True
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                raise _Refused("recursive YAML alias (a node contains itself)", child.start_mark)
            stack.append((child, False))


def _children(node) -> list:
    if isinstance(node, SequenceNode):
        return node.value
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = _REPR.maxother = EXCERPT
_REPR.maxlong = MAX_INT_DIGITS + 10
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 4


def _excerpt(value) -> str:
    """repr(value), bounded: at most EXCERPT characters whatever the value holds."""
    try:
        text = _REPR.repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return _clip(text, EXCERPT)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _line_of(text: str, index: int) -> int:
    """The 1-based line of text[index], counting line breaks as YAML does."""
    head = text[:index]
    breaks = sum(head.count(c) for c in "\n\x85\u2028\u2029")
    return 1 + breaks + head.count("\r") - head.count("\r\n")


class _Context:
    """Where we are in a file, to build errors."""

    def __init__(self, path: str, nr_vcpus: int = 0):
        self.path = path
        self.nr_vcpus = nr_vcpus

    def error(self, line, reason: str) -> TraceError:
        return TraceError(self.path, line or 1, reason)

    def mapping(self, value, what: str, line, keys: set, required: set = frozenset()) -> dict:
        if not isinstance(value, dict):
            raise self.error(line, f"{what} must be a mapping, not {_kind(value)}")
        line = getattr(value, "line", line)
        unknown = [k for k in value if k not in keys]
        if unknown:
            key = min(unknown, key=lambda k: (type(k).__name__, _excerpt(k)))
            where = getattr(value, "key_lines", {}).get(key, line)
            expected = sorted(keys)
            if len(expected) > 12:  # set_sregs has 70 keys: keep the message one short line
                expected = [*expected[:12], f"... {len(keys) - 12} more, see docs/traces.md"]
            raise self.error(
                where, f"{what}: unknown key {_excerpt(key)} (expected: {', '.join(expected)})"
            )
        missing = sorted(k for k in required if k not in value)
        if missing:
            raise self.error(line, f"{what}: missing key {missing[0]!r}")
        return value

    def integer(self, value, what: str, line, low=None, high=None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(line, f"{what} must be an integer, not {_kind(value)}")
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"{low:#x}..{high:#x}" if high and high > 255 else f"{low}..{high}"
            raise self.error(line, f"{what} = {_excerpt(value)} is out of range {span}")
        return value

    def choice(self, value, what: str, line, choices) -> str:
        if not isinstance(value, str) or value not in choices:
            raise self.error(
                line, f"{what} = {_excerpt(value)} is not one of: {', '.join(map(str, choices))}"
            )
        return value

    def boolean(self, value, what: str, line) -> bool:
        if not isinstance(value, bool):
            raise self.error(line, f"{what} must be true or false, not {_kind(value)}")
        return value

    def vcpu(self, value, what: str, line) -> int:
        return self.integer(value, what, line, 0, self.nr_vcpus - 1)

    def strings(self, value, what: str, line) -> tuple:
        items = _list(self, value, what, line)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise self.error(
                    _item_line(items, i, line), f"{what}: {_excerpt(item)} is not a string"
                )
        return tuple(items)


def _kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    for cls, name in ((dict, "a mapping"), (list, "a list"), (str, "a string")):
        if isinstance(value, cls):
            return name
    return type(value).__name__


def _item_line(items, index: int, default) -> int:
    lines = getattr(items, "item_lines", ())
    return lines[index] if index < len(lines) else default


def _key_line(mapping, key, default) -> int:
    return getattr(mapping, "key_lines", {}).get(key, default)


def read_trace_text(path: str) -> str:
    """The text of a trace file: a regular file of at most MAX_BYTES of UTF-8, or TraceError.
    FIFOs, devices, sockets, dangling links and link loops are never opened for reading."""
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            try:
                info = os.stat(path)
            except FileNotFoundError:
                raise TraceError(path, 1, "dangling symbolic link") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise TraceError(path, 1, "symbolic link loop") from None
                raise
        _check_regular(path, info)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            _check_regular(path, os.fstat(fd))  # it may have changed since the stat
            chunks, size = [], 0
            while size <= MAX_BYTES:
                chunk = os.read(fd, MAX_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TraceError(path, 1, "symbolic link loop") from None
        raise TraceError(path, 1, f"cannot read: {exc.strerror or exc}") from None
    data = b"".join(chunks)
    if len(data) > MAX_BYTES:
        raise TraceError(path, 1, f"file is larger than the {MAX_BYTES >> 20} MiB limit")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        head = data[: exc.start].decode("utf-8", errors="replace")
        line = _line_of(head, len(head))
        column = len(head) - max(head.rfind("\n"), head.rfind("\r")) if head else 1
        byte = data[exc.start]
        raise TraceError(
            path, line, f"not UTF-8 text: byte {byte:#04x} at column {column}"
        ) from None


def _check_regular(path: str, info: os.stat_result) -> None:
    mode = info.st_mode
    if stat.S_ISREG(mode):
        if info.st_size > MAX_BYTES:
            raise TraceError(path, 1, f"file is larger than the {MAX_BYTES >> 20} MiB limit")
        return
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    kind = next((name for test, name in kinds if test(mode)), "special")
    raise TraceError(path, 1, f"not a regular file ({kind})")


def load_trace(path: str) -> f.Trace:
    """Parse one trace file; raise TraceError (file, line, reason) for anything malformed."""
    return parse_trace(read_trace_text(path), path)


def _parse_yaml(text: str, path: str):
    if len(text) > MAX_BYTES:
        raise TraceError(path, 1, f"file is larger than the {MAX_BYTES >> 20} MiB limit")
    bad = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if bad:
        raise TraceError(
            path,
            _line_of(text, bad.start()),
            f"not valid YAML: unacceptable character #x{ord(bad.group()):04x}",
        )
    loader = _Composer(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node)
        return loader.construct_document(node)
    except yaml.reader.ReaderError as exc:
        if CParser is not None:  # libyaml counts in bytes of UTF-8 (a BOM inside the text)
            head = text.encode("utf-8")[: exc.position].decode("utf-8", errors="replace")
        else:  # pragma: no cover
            head = text[: exc.position]
        line = _line_of(head, len(head))
        what = f"#x{exc.character:04x}" if isinstance(exc.character, int) else "character"
        raise TraceError(path, line, f"not valid YAML: unacceptable character {what}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["error"])[0]
        problem = _clip(problem, 160)
        line = mark.line + 1 if mark else 1
        context = getattr(exc, "context_mark", None)
        if getattr(exc, "context", None) and context is not None and context.line + 1 != line:
            problem += f" ({_clip(exc.context, 80)} that starts at line {context.line + 1})"
        if not isinstance(exc, _Refused):
            problem = f"not valid YAML: {problem}"
        raise TraceError(path, line, problem) from None
    finally:
        loader.dispose()


def parse_trace(text: str, path: str = "<string>") -> f.Trace:
    document = _parse_yaml(text, path)
    ctx = _Context(path)
    top = ctx.mapping(
        document,
        "trace",
        1,
        {
            "name",
            "description",
            "rules",
            "tags",
            "profiles",
            "pinned_profiles",
            "requires",
            "outcomes",
            "setup",
            "steps",
        },
        {"name", "steps"},
    )
    line = top.line
    name = top["name"]
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ctx.error(
            _key_line(top, "name", line),
            f"name {_excerpt(name)} must be lower-case letters, digits, '-', '.', '_'",
        )
    setup = _setup(ctx, top.get("setup", {}), _key_line(top, "setup", line))
    ctx.nr_vcpus = setup.vcpus
    rules_line = _key_line(top, "rules", line)
    rules = tuple(
        _rule(ctx, r, rules_line) for r in _list(ctx, top.get("rules", []), "rules", line)
    )
    tags = ctx.strings(top.get("tags", []), "tags", _key_line(top, "tags", line))
    profiles = _profiles(ctx, top.get("profiles", []), "profiles", _key_line(top, "profiles", line))
    requires = tuple(
        ctx.choice(r, "requires", line, REQUIREMENTS)
        for r in _list(ctx, top.get("requires", []), "requires", _key_line(top, "requires", line))
    )
    pinned = _profiles(
        ctx,
        top.get("pinned_profiles", ["mainline"]),
        "pinned_profiles",
        _key_line(top, "pinned_profiles", line),
    )
    description = top.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise ctx.error(
            _key_line(top, "description", line),
            f"description must be text, not {_kind(description)}",
        )
    steps_value = top["steps"]
    if not isinstance(steps_value, list) or not steps_value:
        raise ctx.error(_key_line(top, "steps", line), "steps must be a non-empty list")
    steps = tuple(
        _step(ctx, s, _item_line(steps_value, i, line), setup, nested=False)
        for i, s in enumerate(steps_value)
    )
    _check_sequence(ctx, steps)
    outcomes = _outcomes(ctx, top, steps, line)
    return f.Trace(
        name=name,
        path=path,
        line=line,
        setup=setup,
        steps=steps,
        description=description.strip(),
        rules=rules,
        tags=tags,
        profiles=profiles,
        requires=requires,
        pinned_profiles=pinned,
        outcomes=outcomes,
    )


def _outcomes(ctx, top, steps, line) -> tuple:
    """`outcomes: {mainline: [label, ...]}`: the block's outcome set per profile, as the
    explorer labels them (`kvmtest explore` prints them)."""
    if "outcomes" not in top:
        return ()
    at = _key_line(top, "outcomes", line)
    value = top["outcomes"]
    if not isinstance(value, dict) or not value:
        raise ctx.error(at, "outcomes must map profile names to lists of outcome labels")
    if not any(s.kind == "concurrently" for s in steps):
        raise ctx.error(at, "outcomes pins a concurrently block's outcomes; this trace has none")
    out = []
    for name, labels in value.items():
        where = _key_line(value, name, at)
        _profiles(ctx, [name], "outcomes", where)
        items = _list(ctx, labels, f"outcomes.{name}", where)
        if not items:
            raise ctx.error(where, f"outcomes.{name}: an empty outcome set allows nothing")
        seen = []
        for i, label in enumerate(items):
            if not isinstance(label, str) or not label.strip():
                raise ctx.error(
                    _item_line(items, i, where), f"outcomes.{name}: a label must be text"
                )
            if label in seen:
                raise ctx.error(
                    _item_line(items, i, where), f"outcomes.{name}: {_excerpt(label)} twice"
                )
            seen.append(label)
        out.append((name, tuple(seen)))
    return tuple(out)


def _profiles(ctx, value, what, line) -> tuple:
    import reference

    names = ctx.strings(value, what, line)
    for i, name in enumerate(names):
        if name not in reference.PROFILES:
            raise ctx.error(
                _item_line(value, i, line),
                f"{what}: unknown profile {_excerpt(name)} "
                f"(known: {', '.join(reference.PROFILES)})",
            )
    return names


def _check_sequence(ctx, steps) -> None:
    """Rules across steps: what the engine and the explorer can replay."""
    first: dict = {}
    seen_block = None
    for step in steps:
        if step.kind in ("concurrently", "smp_boot"):
            if step.kind in first:
                what = "concurrently block" if step.kind == "concurrently" else "smp_boot"
                raise ctx.error(
                    step.line,
                    f"only one {what} per trace (the first is at line {first[step.kind]})",
                )
            first[step.kind] = step.line
        if isinstance(step, f.Snapshot):
            first.setdefault("snapshot", step.line)
        if isinstance(step, f.Restore) and "snapshot" not in first:
            raise ctx.error(step.line, "restore before any snapshot: nothing to restore")
        if isinstance(step, f.Concurrently):
            seen_block = step
        elif seen_block is not None and isinstance(step, f.Observe) and step.expect:
            raise ctx.error(
                step.line,
                "observe.expect after a concurrently block is never checked (the block's "
                f"outcome, line {seen_block.line}, is what is compared); pin before the block",
            )


def _list(ctx, value, what, line) -> list:
    if not isinstance(value, list):
        raise ctx.error(line, f"{what} must be a list, not {_kind(value)}")
    return value


def _rule(ctx, value, line) -> str:
    """Rule numbers: 12 (section b) or 'd7.3' (a quirk of section d.7)."""
    text = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if not RULE_PATTERN.fullmatch(text):
        raise ctx.error(
            line, f"rule {_excerpt(value)} must be a rule number (12), a quirk (d7.3) or d8.N"
        )
    return text


def _setup(ctx, value, line) -> f.Setup:
    keys = {"vcpus", "apic", "irqchip", "guest", "sync_apic_map"}
    value = ctx.mapping(value, "setup", line, keys)
    line = getattr(value, "line", line)
    default = f.Setup()
    sync = value.get("sync_apic_map", default.sync_apic_map)
    if not isinstance(sync, bool):
        raise ctx.error(line, "setup.sync_apic_map must be true or false")
    return f.Setup(
        vcpus=ctx.integer(value.get("vcpus", default.vcpus), "setup.vcpus", line, 1, 64),
        apic=ctx.choice(value.get("apic", default.apic), "setup.apic", line, ("xapic", "x2apic")),
        irqchip=ctx.choice(
            value.get("irqchip", default.irqchip), "setup.irqchip", line, ("kernel", "split")
        ),
        guest=ctx.choice(
            value.get("guest", default.guest), "setup.guest", line, ("none", "stepper", "smp-boot")
        ),
        sync_apic_map=sync,
    )


def _mp_state(ctx, value, line) -> int:
    if isinstance(value, str):
        if value.upper() not in f.MP_STATES:
            raise ctx.error(
                line, f"unknown mp_state {_excerpt(value)} (one of {', '.join(f.MP_STATES)})"
            )
        return f.MP_STATES[value.upper()]
    return ctx.integer(value, "state", line, 0, 0xFFFFFFFF)


def _delivery(ctx, value, line) -> int:
    if isinstance(value, str):
        return f.DELIVERY_MODES[ctx.choice(value, "delivery", line, tuple(f.DELIVERY_MODES))]
    return ctx.integer(value, "delivery", line, 0, 7)


def _msi(ctx, value, line) -> f.Msi:
    raw = {"address_lo", "address_hi", "data"}
    fields = {"dest", "delivery", "vector", "dest_mode", "trigger", "level", "redirection_hint"}
    value = ctx.mapping(value, "msi", line, raw | fields)
    line = getattr(value, "line", line)
    if raw & value.keys():
        if fields & value.keys():
            raise ctx.error(line, "msi: give either address_lo/address_hi/data or dest/delivery")
        return f.Msi(
            ctx.integer(value.get("address_lo", 0xFEE00000), "address_lo", line, 0, 0xFFFFFFFF),
            ctx.integer(value.get("address_hi", 0), "address_hi", line, 0, 0xFFFFFFFF),
            ctx.integer(value.get("data", 0), "data", line, 0, 0xFFFFFFFF),
            line=line,
        )
    if "dest" not in value or "delivery" not in value:
        raise ctx.error(line, "msi: needs dest and delivery (or raw address_lo/data)")
    dest = ctx.integer(value["dest"], "msi.dest", line, 0, 0xFF)
    logical = ctx.choice(
        value.get("dest_mode", "physical"), "msi.dest_mode", line, ("physical", "logical")
    )
    trigger = ctx.choice(value.get("trigger", "edge"), "msi.trigger", line, ("edge", "level"))
    level = ctx.integer(value.get("level", 0), "msi.level", line, 0, 1)
    hint = ctx.boolean(value.get("redirection_hint", False), "msi.redirection_hint", line)
    address = 0xFEE00000 | dest << 12 | (logical == "logical") << 2 | hint << 3
    data = (
        ctx.integer(value.get("vector", 0), "msi.vector", line, 0, 255)
        | _delivery(ctx, value["delivery"], line) << 8
        | level << 14
        | (trigger == "level") << 15
    )
    return f.Msi(address, 0, data, line=line)


ICR_FIELDS = ("dest", "delivery", "vector", "dest_mode", "level", "trigger", "shorthand")


def icr_value(ctx, value, line, apic: str) -> int:
    """Build a 64-bit ICR from named fields (rule 40's layout)."""
    value = ctx.mapping(value, "icr", line, {"vcpu", "value", *ICR_FIELDS}, {"vcpu"})
    line = getattr(value, "line", line)
    if "value" in value:
        given = [k for k in ICR_FIELDS if k in value]
        if given:
            raise ctx.error(
                line, f"icr: give either value or the fields ({', '.join(given)}), not both"
            )
        return ctx.integer(value["value"], "icr.value", line, 0, (1 << 64) - 1)
    if "delivery" not in value:
        raise ctx.error(line, "icr: needs delivery (or a raw value)")
    high = 0xFFFFFFFF if apic == "x2apic" else 0xFF
    dest = ctx.integer(value.get("dest", 0), "icr.dest", line, 0, high)
    shorthand = ctx.choice(value.get("shorthand", "none"), "icr.shorthand", line, f.SHORTHANDS)
    dest_mode = ctx.choice(
        value.get("dest_mode", "physical"), "icr.dest_mode", line, ("physical", "logical")
    )
    trigger = ctx.choice(value.get("trigger", "edge"), "icr.trigger", line, ("edge", "level"))
    low = (
        ctx.integer(value.get("vector", 0), "icr.vector", line, 0, 255)
        | _delivery(ctx, value["delivery"], line) << 8
        | (dest_mode == "logical") << 11
        | ctx.integer(value.get("level", 1), "icr.level", line, 0, 1) << 14
        | (trigger == "level") << 15
        | f.SHORTHANDS[shorthand] << 18
    )
    dest_bits = dest << 32 if apic == "x2apic" else dest << 56
    return dest_bits | low


def _vcpus(ctx, value, what, line) -> tuple:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ctx.error(line, f"{what}: an empty list of vCPUs observes nothing")
    return tuple(ctx.vcpu(v, "vcpu", _item_line(items, i, line)) for i, v in enumerate(items))


def _observe(ctx, value, line) -> f.Observe:
    if not isinstance(value, dict):
        return f.Observe(_vcpus(ctx, value, "observe", line), line=line)
    value = ctx.mapping(value, "observe", line, {"vcpus", "vcpu", "read", "fields", "expect"})
    line = getattr(value, "line", line)
    if "vcpus" in value and "vcpu" in value:
        raise ctx.error(line, "observe: give vcpu or vcpus, not both")
    if "vcpus" not in value and "vcpu" not in value:
        raise ctx.error(line, "observe: missing key 'vcpu' (or 'vcpus')")
    vcpus = _vcpus(ctx, value.get("vcpus", value.get("vcpu")), "observe", line)
    reads = _list(ctx, value.get("read", list(f.DEFAULT_READ)), "observe.read", line)
    if not reads:
        raise ctx.error(line, "observe.read: an empty list reads nothing")
    read = tuple(ctx.choice(r, "observe.read", line, f.READS) for r in reads)
    readable = {name for r in read for name in f.fields_of_read(r)}
    fields = None
    if "fields" in value:
        names = ctx.strings(value["fields"], "observe.fields", line)
        if not names:
            raise ctx.error(line, "observe.fields: an empty list compares nothing")
        for name in names:
            if name not in readable:
                raise ctx.error(
                    line, f"observe.fields: {_excerpt(name)} is not produced by read {read}"
                )
        fields = frozenset(names)
    expect = {}
    if "expect" in value:
        pins = value["expect"]
        if not isinstance(pins, dict):
            raise ctx.error(line, "observe.expect must map field names to values")
        if len(vcpus) > 1 and not all(isinstance(k, int) and not isinstance(k, bool) for k in pins):
            raise ctx.error(line, "observe.expect: with several vCPUs, key it by vCPU number")
        per_vcpu = pins if len(vcpus) > 1 else {vcpus[0]: pins}
        for vcpu, wanted in per_vcpu.items():
            if vcpu not in vcpus or not isinstance(wanted, dict):
                raise ctx.error(line, f"observe.expect: vCPU {_excerpt(vcpu)} is not observed here")
            expect[vcpu] = {}
            for name, pinned in wanted.items():
                if not isinstance(name, str) or name not in readable:
                    raise ctx.error(
                        line, f"observe.expect: {_excerpt(name)} is not read by this step"
                    )
                if name == "mp_state":
                    pinned = _mp_state(ctx, pinned, line)
                expect[vcpu][name] = ctx.integer(pinned, f"expect {name}", line, 0, (1 << 64) - 1)
    return f.Observe(vcpus, read, fields, expect, line=line)


def _step(ctx, value, line, setup: f.Setup, nested: bool, thread: str | None = None):
    if not isinstance(value, dict):
        raise ctx.error(line, f"a step must be a mapping like 'msi: ...', not {_kind(value)}")
    line = getattr(value, "line", line)
    keys = [k for k in value if k not in ANNOTATIONS]
    if len(keys) != 1:
        shown = _excerpt(keys)
        raise ctx.error(line, f"a step has exactly one kind, found {len(keys)}: {shown}")
    kind, body = keys[0], value[keys[0]]
    notes = _annotations(ctx, value, line)
    if isinstance(body, dict):
        line = getattr(body, "line", line)
    op = _step_of_kind(ctx, kind, body, line, setup, nested, thread)
    return dataclasses.replace(op, **notes) if notes else op


# Optional keys beside a step's kind: when and by which thread a recorded VMM did it, and
# what its ioctl returned.
ANNOTATIONS = ("at", "tid", "result")
RESULT_RANGE = (-4095, (1 << 31) - 1)  # -errno, or an ioctl's non-negative int


def _annotations(ctx, value, line) -> dict:
    notes = {}
    if "at" in value:
        at = value["at"]
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not 0 <= at <= 1e9:
            raise ctx.error(line, f"at must be seconds from 0 to 1e9, not {_excerpt(at)}")
        notes["at"] = float(at)
    if "tid" in value:
        notes["tid"] = ctx.integer(value["tid"], "tid", line, 0, (1 << 32) - 1)
    if "result" in value:
        notes["result"] = ctx.integer(value["result"], "result", line, *RESULT_RANGE)
    return notes


def _step_of_kind(ctx, kind, body, line, setup: f.Setup, nested: bool, thread):
    known = (
        "msi, icr, observe, get_mp_state, set_mp_state, set_vcpu_events, set_lapic, set_regs, "
        "set_sregs, set_msrs, smi, nmi, guest_ran, "
        + ", ".join(GUEST_COMMANDS)
        + ", smp_boot, snapshot, restore, concurrently"
    )
    if not isinstance(kind, str):
        raise ctx.error(line, f"unknown step {_excerpt(kind)} (known: {known})")
    if nested and kind == "concurrently":
        raise ctx.error(line, "concurrently blocks cannot nest")
    if nested and kind in known.split(", ") and kind not in CONCURRENT_KINDS:
        raise ctx.error(
            line,
            f"step {kind!r} cannot run inside a concurrently block "
            f"(supported: {', '.join(CONCURRENT_KINDS)})",
        )
    guest_kinds = set(GUEST_COMMANDS) | {"icr"}
    if kind in guest_kinds and setup.guest != "stepper":
        raise ctx.error(line, f"step {kind!r} needs setup.guest: stepper")
    if kind == "msi":
        return _msi(ctx, body, line)
    if kind == "icr":
        body = ctx.mapping(body, "icr", line, set(), set()) if not isinstance(body, dict) else body
        vcpu = ctx.vcpu(body.get("vcpu"), "icr.vcpu", line)
        return f.Icr(vcpu, icr_value(ctx, body, line, setup.apic), line=line)
    if kind == "observe":
        return _observe(ctx, body, line)
    if kind in ("set_regs", "set_sregs", "set_msrs") or (
        kind == "set_lapic" and isinstance(body, dict)
    ):
        return _register_step(ctx, kind, body, line)
    if kind == "guest_ran":
        if setup.guest != "none":
            raise ctx.error(line, "step 'guest_ran' needs setup.guest: none (a recording)")
        if isinstance(body, dict):
            body = ctx.mapping(body, kind, line, {"vcpu"}, {"vcpu"})["vcpu"]
        return f.GuestRan(ctx.vcpu(body, kind, line), line=line)
    if kind in ("get_mp_state", "set_lapic", "smi", "nmi"):
        vcpu = ctx.vcpu(body, kind, line)
        cls = {"get_mp_state": f.GetMpState, "set_lapic": f.SetLapic, "smi": f.Smi, "nmi": f.Nmi}
        return cls[kind](vcpu, line=line)
    if kind == "set_mp_state":
        body = ctx.mapping(body, kind, line, {"vcpu", "state"}, {"vcpu", "state"})
        return f.SetMpState(
            ctx.vcpu(body["vcpu"], "vcpu", line), _mp_state(ctx, body["state"], line), line=line
        )
    if kind == "set_vcpu_events":
        body = ctx.mapping(
            body, kind, line, {"vcpu", "sipi_vector", "latched_init", "smm"}, {"vcpu"}
        )
        opt = {
            k: ctx.integer(body[k], k, line, 0, 255)
            for k in ("sipi_vector", "latched_init", "smm")
            if k in body
        }
        return f.SetVcpuEvents(ctx.vcpu(body["vcpu"], "vcpu", line), **opt, line=line)
    if kind in GUEST_COMMANDS:
        if kind == "spin":
            body = ctx.mapping(body, kind, line, {"vcpu", "iterations"}, {"vcpu", "iterations"})
            iterations = ctx.integer(body["iterations"], "spin.iterations", line, 0, 100_000)
            return f.GuestCommand(ctx.vcpu(body["vcpu"], "vcpu", line), kind, iterations, line=line)
        return f.GuestCommand(ctx.vcpu(body, kind, line), kind, line=line)
    if kind == "smp_boot":
        if setup.guest != "smp-boot":
            raise ctx.error(line, "step 'smp_boot' needs setup.guest: smp-boot")
        body = ctx.mapping({} if body is None else body, kind, line, {"broadcast", "vector"})
        broadcast = ctx.boolean(body.get("broadcast", False), "smp_boot.broadcast", line)
        vector = ctx.integer(body.get("vector", 0x10), "smp_boot.vector", line, 0x08, 0x9F)
        return f.SmpBoot(broadcast, vector, line=line)
    if kind in ("snapshot", "restore"):
        if setup.guest != "none":
            raise ctx.error(line, f"step {kind!r} needs setup.guest: none (no guest code yet)")
        if kind == "snapshot":
            if body not in (None, {}):
                raise ctx.error(line, "snapshot takes no arguments: write 'snapshot: {}'")
            return f.Snapshot(line=line)
        return _restore(ctx, body, line)
    if kind == "concurrently":
        return _concurrently(ctx, body, line, setup)
    raise ctx.error(line, f"unknown step {_excerpt(kind)} (known: {known})")


# What each register step may set, in the order the operation keeps them.
REGISTER_STEPS = {
    "set_regs": (f.SetRegs, f.REGISTER_FIELDS),
    "set_sregs": (f.SetSregs, f.SREGS_FIELDS),
    "set_lapic": (f.SetLapic, f.LAPIC_REGISTERS),
    "set_msrs": (f.SetMsrs, tuple(f.MSRS)),
}


def _register_step(ctx, kind, body, line):
    """`set_regs: {vcpu: 1, rip: 0x1000}` and its kin: any subset of the named fields (the rest
    as KVM reads them back), each within its width."""
    cls, names = REGISTER_STEPS[kind]
    body = ctx.mapping(body, kind, line, {"vcpu", *names}, {"vcpu"})
    vcpu = ctx.vcpu(body["vcpu"], f"{kind}.vcpu", line)
    values = []
    for name in names:
        if name in body:
            bits = (
                32 if kind in ("set_lapic",) else 64 if kind == "set_msrs" else f.field_bits(name)
            )
            values.append(
                (name, ctx.integer(body[name], f"{kind}.{name}", line, 0, (1 << bits) - 1))
            )
    if not values:
        shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
        raise ctx.error(
            line, f"{kind}: names no field to set (one of: {shown}; docs/traces.md lists them)"
        )
    return cls(vcpu, tuple(values), line=line)


def _restore(ctx, body, line) -> f.Restore:
    """`restore: {order: [mp_state, lapic, ...], mp_state: {1: SIPI_RECEIVED}}`."""
    body = ctx.mapping({} if body is None else body, "restore", line, {"order", "mp_state"})
    order = f.RESTORE_SETS
    if "order" in body:
        names = ctx.strings(body["order"], "restore.order", line)
        for name in names:
            if name not in f.RESTORE_SETS:
                raise ctx.error(
                    line,
                    f"restore.order: unknown {_excerpt(name)} (known: {', '.join(f.RESTORE_SETS)})",
                )
        if len(set(names)) != len(names):
            raise ctx.error(line, "restore.order: a SET named twice")
        if not names:
            raise ctx.error(line, "restore.order: restores nothing")
        order = names
    states = []
    if "mp_state" in body:
        value = body["mp_state"]
        if not isinstance(value, dict) or not value:
            raise ctx.error(line, "restore.mp_state maps vCPU numbers to states")
        for vcpu, state in value.items():
            states.append((ctx.vcpu(vcpu, "restore.mp_state", line), _mp_state(ctx, state, line)))
        if "mp_state" not in order:
            raise ctx.error(line, "restore.mp_state without mp_state in restore.order")
    return f.Restore(tuple(order), tuple(sorted(states)), line=line)


def _concurrently(ctx, body, line, setup) -> f.Concurrently:
    branches = []
    for i, item in enumerate(_list(ctx, body, "concurrently", line)):
        item_line = _item_line(body, i, line)
        item = ctx.mapping(item, "concurrently branch", item_line, {"thread", "steps"}, {"thread"})
        item_line = getattr(item, "line", item_line)
        thread = item["thread"]
        if thread != "host":
            thread = f"vcpu{ctx.vcpu(thread, 'thread', item_line)}"
        if any(b.thread == thread for b in branches):
            raise ctx.error(item_line, f"concurrently: two branches for thread {thread}")
        steps = _list(ctx, item.get("steps", []), "steps", item_line)
        if not steps:
            raise ctx.error(item_line, f"concurrently: the branch for {thread} has no steps")
        branches.append(
            f.Branch(
                thread,
                tuple(
                    _step(ctx, s, _item_line(steps, j, item_line), setup, True, thread)
                    for j, s in enumerate(steps)
                ),
            )
        )
    if len(branches) < 2:
        raise ctx.error(line, "concurrently needs at least two branches")
    return f.Concurrently(tuple(branches), line=line)


def find_trace_files(paths) -> tuple[list[str], list[TraceError]]:
    """(files, errors): directories expanded into their *.yaml / *.yml files, sorted (stable
    for xdist); other paths are taken as they are (load_trace judges them). Links to
    directories are followed, except one leading back to a directory being walked; an
    unreadable directory is an error, never a silent skip."""
    files: list[str] = []
    errors: list[TraceError] = []
    for path in paths:
        if os.path.isdir(path):
            _walk(path, files, errors)
        else:
            files.append(path)
    return files, errors


def _walk(top: str, files: list, errors: list) -> None:
    stack = [(top, frozenset())]
    while stack:
        directory, ancestors = stack.pop()
        try:
            info = os.stat(directory)
            ident = (info.st_dev, info.st_ino)
            if ident in ancestors:
                errors.append(
                    TraceError(directory, None, "symbolic link loop (back to a directory above)")
                )
                continue
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            errors.append(
                TraceError(directory, None, f"cannot read directory: {exc.strerror or exc}")
            )
            continue
        subdirs = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(entry.path)
            elif entry.name.endswith((".yaml", ".yml")):
                files.append(entry.path)
        stack += [(d, ancestors | {ident}) for d in reversed(subdirs)]
