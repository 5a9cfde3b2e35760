"""Single-rule mutants of the model's code, made by an AST transformer.

A mutant is one edit at one site of one module of ``reference``: ``delete`` (an assignment or a
call statement becomes ``pass``), ``swap`` (an if's branches swapped; an if without else has its
test negated), ``constant`` (an int n becomes n + 1, a bool flips, an mp_state name in a rule
table becomes the next state), ``condition`` (one operand of ``and``/``or`` dropped, a ``not``
dropped) and ``compare`` (``==``/``!=``, ``in``/``not in``, ``<``/``<=``, ``>``/``>=`` swapped).
What is not a rule is never mutated: docstrings, error paths (``raise``), the helpers that copy,
hash or print state, the enum definitions and the step tables of the explorer.

Sites are numbered in a fixed walk of the module, so ``(module, index)`` names a mutant across
processes. Standard library only, and ``reference`` is never imported: ``module_path`` finds
the source without running it.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import os
from dataclasses import dataclass

MODULES = ("reference.machine", "reference.regs", "reference.encodings")

# Functions and assignments that are not rules: copying, hashing, printing, lookups.
SKIP_FUNCTIONS = frozenset(
    {
        "__new__",
        "__repr__",
        "__reduce__",
        "__copy__",
        "__deepcopy__",
        "__str__",
        "copy",
        "key",
        "clone",
        "_v",
        "_ioctl",
        "_state",
        "resolve",
        "_pick",
        "atomic_steps",
        "can_apply",
        "apply",
        "step",
        "segment_dict",
        "dtable_dict",
    }
)
SKIP_CLASSES = frozenset(
    {"MpState", "Phase", "RunResult", "Step", "By", "Irq", "Segment", "DTable"}
)
SKIP_ASSIGNMENTS = frozenset(
    {"_KEY_FIELDS", "_OPS", "_GUEST_STEPS", "_IOCTL_STEPS", "_key_fields", "_REG_ORDER",
     "DELIVERY_MODE_NAMES", "__all__", "GUEST", "GUEST_SEGMENT", "GUEST_DTABLE", "_ONLINE"}
)  # fmt: skip
MP_STATE_NAMES = ("RUN", "U", "IR", "H", "SR", "ARH")  # machine.py's aliases, in a cycle
COMPARE_SWAPS = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}


@dataclass(frozen=True)
class Site:
    """One mutation site: module, index in the walk, operator, line and what changes."""

    module: str
    index: int
    operator: str
    line: int
    function: str
    description: str

    @property
    def id(self) -> str:
        return f"{self.module.rsplit('.', 1)[-1]}:{self.index}"

    @property
    def where(self) -> str:
        return f"{self.module.replace('.', '/')}.py:{self.line}"


def module_path(module: str) -> str:
    """The source file of a ``reference`` module, found without importing the package."""
    spec = importlib.util.find_spec("reference")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("cannot find the reference package")
    name = module.rsplit(".", 1)[-1]
    return os.path.join(list(spec.submodule_search_locations)[0], f"{name}.py")


def _is_docstring(node) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)


def _src(node) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 70 else text[:67] + "..."


class _Walker(ast.NodeTransformer):
    """Walks a module in a fixed order, counting sites; mutates the one numbered ``target``."""

    def __init__(self, module: str, target: int | None):
        self.module = module
        self.target = target
        self.sites: list[Site] = []
        self.function = "<module>"
        self.done = False

    def _site(self, node, operator: str, description: str) -> bool:
        """Record a site; True if it is the one to mutate."""
        index = len(self.sites)
        self.sites.append(
            Site(
                self.module, index, operator, getattr(node, "lineno", 0), self.function, description
            )
        )
        hit = index == self.target
        self.done = self.done or hit
        return hit

    # --- scopes that are or are not rules

    def visit_ClassDef(self, node):
        if node.name in SKIP_CLASSES:
            return node
        return self.generic_visit(node)

    def visit_FunctionDef(self, node):
        if node.name in SKIP_FUNCTIONS:
            return node
        outer, self.function = self.function, node.name
        node.body = self._statements(node.body)
        self.function = outer
        return node

    def visit_Raise(self, node):
        return node  # error paths are not rules

    def visit_JoinedStr(self, node):
        return node  # messages

    def visit_Assign(self, node):
        names = {t.id for t in node.targets if isinstance(t, ast.Name)}
        if names & SKIP_ASSIGNMENTS:
            return node
        return self.generic_visit(node)

    def visit_Module(self, node):
        node.body = [self.visit(s) if not _is_docstring(s) else s for s in node.body]
        return node

    def _statements(self, body: list) -> list:
        """A function's (or branch's) statements: each may be deleted, then is walked."""
        out = []
        for stmt in body:
            if _is_docstring(stmt):
                out.append(stmt)
                continue
            deletable = isinstance(stmt, (ast.Assign, ast.AugAssign)) or (
                isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
            )
            if deletable and self._site(stmt, "delete", f"delete `{_src(stmt)}`"):
                out.append(ast.copy_location(ast.Pass(), stmt))
                continue
            out.append(self.visit(stmt))
        return out

    # --- operators

    def visit_If(self, node):
        negate = False
        if node.orelse:
            hit = self._site(node, "swap", f"swap the branches of `if {_src(node.test)}`")
            if hit:
                node.body, node.orelse = node.orelse, node.body
        else:
            negate = self._site(node, "swap", f"negate `if {_src(node.test)}`")
        node.test = self.visit(node.test)
        if negate:
            node.test = ast.copy_location(ast.UnaryOp(ast.Not(), node.test), node.test)
        node.body = self._statements(node.body)
        node.orelse = self._statements(node.orelse)
        return node

    def visit_For(self, node):
        node.iter = self.visit(node.iter)
        node.body = self._statements(node.body)
        return node

    def visit_While(self, node):
        node.test = self.visit(node.test)
        node.body = self._statements(node.body)
        return node

    def visit_Try(self, node):
        node.body = self._statements(node.body)
        node.finalbody = self._statements(node.finalbody)
        return node

    def visit_IfExp(self, node):
        if self._site(node, "swap", f"swap the arms of `{_src(node)}`"):
            node.body, node.orelse = node.orelse, node.body
        return self.generic_visit(node)

    def visit_BoolOp(self, node):
        word = "and" if isinstance(node.op, ast.And) else "or"
        replacement = None
        for i, value in enumerate(node.values):
            if self._site(node, "condition", f"drop `{_src(value)}` from an `{word}`"):
                rest = node.values[:i] + node.values[i + 1 :]
                replacement = rest[0] if len(rest) == 1 else ast.BoolOp(node.op, rest)
        if replacement is not None:
            return self.visit(ast.copy_location(replacement, node))
        return self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, ast.Not) and self._site(
            node, "condition", f"drop the `not` of `{_src(node)}`"
        ):
            return self.visit(node.operand)
        return self.generic_visit(node)

    def visit_Compare(self, node):
        if len(node.ops) == 1 and type(node.ops[0]) in COMPARE_SWAPS:
            new = COMPARE_SWAPS[type(node.ops[0])]
            old_text = _src(node)
            if self._site(node, "compare", f"`{old_text}` with {new.__name__}"):
                node.ops = [new()]
        return self.generic_visit(node)

    def visit_Constant(self, node):
        value = node.value
        if isinstance(value, bool):
            if self._site(node, "constant", f"{value} -> {not value}"):
                return ast.copy_location(ast.Constant(not value), node)
        elif isinstance(value, int):
            if self._site(node, "constant", f"{_num(value)} -> {_num(value + 1)}"):
                return ast.copy_location(ast.Constant(value + 1), node)
        return node

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load) and node.id in MP_STATE_NAMES:
            nxt = MP_STATE_NAMES[(MP_STATE_NAMES.index(node.id) + 1) % len(MP_STATE_NAMES)]
            if self._site(node, "constant", f"state {node.id} -> {nxt}"):
                return ast.copy_location(ast.Name(nxt, ast.Load()), node)
        return node

    def visit_Attribute(self, node):
        node.value = self.visit(node.value)
        return node

    def visit_Subscript(self, node):
        node.value = self.visit(node.value)
        if not isinstance(node.slice, ast.Constant) or not isinstance(node.slice.value, str):
            node.slice = self.visit(node.slice)
        return node


def _num(value: int) -> str:
    return hex(value) if abs(value) > 9 else str(value)


def _parse(module: str) -> ast.Module:
    with open(module_path(module), encoding="utf-8") as fh:
        return ast.parse(fh.read(), module_path(module))


_SITES: dict = {}


def sites(module: str) -> list[Site]:
    """Every mutation site of one module, in walk order."""
    if module not in _SITES:
        walker = _Walker(module, None)
        walker.visit(_parse(module))
        _SITES[module] = walker.sites
    return _SITES[module]


def all_sites() -> list[Site]:
    return [s for m in MODULES for s in sites(m)]


def mutated_code(module: str, index: int):
    """The module's code object with site ``index`` mutated (line numbers as in the file)."""
    tree = _parse(module)
    walker = _Walker(module, index)
    tree = walker.visit(copy.deepcopy(tree))
    if not walker.done:
        raise ValueError(f"{module} has no mutation site {index}")
    ast.fix_missing_locations(tree)
    return compile(tree, module_path(module), "exec")
