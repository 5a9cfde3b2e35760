"""The layers of docs/design.md, enforced: imports only point down, siblings stay apart, no
module reaches into another package's private names, and the import graph has no cycle.

LAYERS is the one home of the layering; docs/design.md carries the table rendered from it
(test_design_doc_shows_these_layers), so the picture and the rule cannot drift apart.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Top down: (layer, packages or modules, what it is). A module may import its own layer's
# modules only where SIBLINGS does not forbid it, and any layer below its own.
LAYERS = [
    (
        "cli",
        ["kvmtest.cli", "kvmtest.__main__", "kvmtest.pytest_plugin"],
        "argument parsing, exit codes, errors to stderr; the pytest plugin",
    ),
    (
        "tools",
        [
            "kvmtest.matrix",
            "kvmtest.coverage",
            "kvmtest.answers",
            "kvmtest.record",
            "kvmtest.findings_doc",
            "kvmtest.mutate",
            "kvmtest.fuzz",
        ],
        "kernel matrix, generated coverage table, generated answers and findings pages; "
        "recording a VMM; mutation testing; differential fuzzer",
    ),
    (
        "suite",
        ["kvmtest.suite", "kvmtest.pool"],
        "many traces: selection, backends, jobs (processes and threads), timeouts",
    ),
    ("report", ["kvmtest.report"], "text, KTAP, JSON, JUnit of a run's results"),
    ("trace", ["kvmtest.trace"], "load, dump, run_trace (predict, perform, compare), results"),
    (
        "sim+exec",
        ["kvmtest.sim", "kvmtest.exec", "kvmtest.host"],
        "the simulated system and its "
        "schedulers; performing operations on /dev/kvm; the host probe",
    ),
    (
        "ops+guest",
        ["kvmtest.ops", "kvmtest.guest", "kvmtest.rules", "kvmtest._rule_titles"],
        "the operation vocabulary; guest layout, protocol, images, loader; rule titles",
    ),
    ("kvm", ["kvmtest.kvm"], "cffi bindings: Kvm, Vm, Vcpu, exits, KvmError"),
    ("reference", ["reference"], "the model: standard library only"),
]
# Packages in one layer that must not import each other.
SIBLINGS = [("kvmtest.sim", "kvmtest.exec"), ("kvmtest.matrix", "kvmtest.coverage")]
# Modules that must stay pure data (usable without /dev/kvm or the bindings).
PURE = {
    "kvmtest.guest.layout": set(),
    "kvmtest.guest.protocol": {"kvmtest.guest.layout"},
    "kvmtest.guest.images": {"kvmtest.guest.layout", "kvmtest.guest.protocol"},
    "kvmtest.ops": {"reference"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources():
    for top in ("kvmtest", "reference"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if "_build" not in path.name:
                yield module_name(path), path


MODULES = dict(sources())


def resolve(name: str) -> str:
    """The longest prefix of a dotted name that is one of our modules."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports(module: str, path: Path):
    """(imported module, names imported from it, line) for every import, nested ones too."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, (), node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = tuple(a.name for a in node.names)
            yield base, names, node.lineno
            for name in names:  # `from kvmtest import ops` imports the module kvmtest.ops
                if f"{base}.{name}" in MODULES:
                    yield f"{base}.{name}", (), node.lineno


def edges():
    for module, path in MODULES.items():
        for target, names, line in imports(module, path):
            resolved = resolve(target)
            if resolved and resolved != module:
                yield module, resolved, names, line


def layer_of(module: str) -> int:
    for index, (_, prefixes, _) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no layer of docs/design.md")


def owner(module: str, prefixes) -> str | None:
    return next((p for p in prefixes if module == p or module.startswith(p + ".")), None)


def test_every_module_has_a_layer():
    for module in MODULES:
        if module != "kvmtest":
            layer_of(module)


def test_imports_only_point_down_and_siblings_stay_apart():
    wrong = []
    for src, dst, _, line in edges():
        if "kvmtest" in (src, dst):
            continue  # the top package only holds __version__
        if layer_of(dst) < layer_of(src):
            wrong.append(f"{src}:{line} imports {dst}, a layer above it")
        for a, b in SIBLINGS:
            if {owner(src, [a, b]), owner(dst, [a, b])} == {a, b}:
                wrong.append(f"{src}:{line} imports its sibling {dst}")
    assert wrong == []


def test_reference_needs_only_the_standard_library():
    import sys

    allowed = set(sys.stdlib_module_names) | {"reference"}
    for module, path in MODULES.items():
        if module.startswith("reference"):
            for target, _, line in imports(module, path):
                assert target.split(".")[0] in allowed, f"{module}:{line} imports {target}"


def test_pure_modules_import_only_pure_modules():
    import sys

    for module, allowed in PURE.items():
        for target, _, line in imports(module, MODULES[module]):
            top = target.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            assert resolve(target) in allowed, f"{module}:{line} imports {target}"


def test_no_module_uses_another_packages_private_names():
    wrong = []
    for src, dst, names, line in edges():
        package = src.rpartition(".")[0]
        same_package = dst == package or dst.startswith(package + ".")
        for name in names:
            if name.startswith("_") and not name.startswith("__") and not same_package:
                wrong.append(f"{src}:{line} imports {dst}.{name}")
    assert wrong == []


def test_the_import_graph_has_no_cycle():
    graph: dict = {}
    for src, dst, _, _ in edges():
        graph.setdefault(src, set()).add(dst)
    # A package's __init__ importing its own submodules is how packages work, not a cycle.
    for src in graph:
        graph[src] = {d for d in graph[src] if not d.startswith(src + ".")}
    state: dict = {}
    cycle: list = []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle.extend(path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt])
                return True
            if nxt not in state and visit(nxt, path + [nxt]):
                return True
        state[node] = "done"
        return False

    for node in sorted(graph):
        if node not in state and visit(node, [node]):
            break
    assert cycle == []


def render_layers() -> str:
    rows = ["| layer | packages | what |", "|---|---|---|"]
    for name, prefixes, what in LAYERS:
        rows.append(f"| {name} | {', '.join(f'`{p}`' for p in prefixes)} | {what} |")
    return "\n".join(rows)


def test_design_doc_shows_these_layers():
    doc = (ROOT / "docs" / "design.md").read_text()
    assert render_layers() in doc, "docs/design.md: paste the table of render_layers()"
    for a, b in SIBLINGS:
        assert f"`{a}` and `{b}`" in doc
