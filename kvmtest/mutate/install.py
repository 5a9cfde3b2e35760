"""Install a mutant before anything imports ``reference``: a meta path finder that serves the
mutated module's code in place of the file. Standard library only (it runs first)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

from . import ast_mutants


class _MutantLoader(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, module: str, code, path: str):
        self.module, self.code, self.path = module, code, path

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.module:
            return None
        return importlib.util.spec_from_file_location(fullname, self.path, loader=self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(self.code, module.__dict__)


def install(module: str, index: int) -> None:
    """Make ``import module`` run the code with site ``index`` mutated. Must run before the
    first import of ``reference``."""
    if any(name == "reference" or name.startswith("reference.") for name in sys.modules):
        raise RuntimeError("reference is already imported: the mutant would not take effect")
    code = ast_mutants.mutated_code(module, index)
    sys.meta_path.insert(0, _MutantLoader(module, code, ast_mutants.module_path(module)))
