"""`kvmtest mutate`: how many single-rule errors of the model would the corpus catch?

It makes mutants of the reference model by itself: every profile switch of the host's profile
flipped (``switches``), and small edits of the rules that are code, made by an AST transformer
over ``reference/machine.py``, ``reference/regs.py`` and ``reference/encodings.py``
(``ast_mutants``). Each mutant runs in a fresh interpreter (``worker``) with the mutated module
installed before anything imports ``reference``: it predicts every corpus trace on the model
first, and only the traces whose prediction differs from the unmutated model's are replayed on
KVM (``runner``). docs/mutation.md is the report.

Nothing here imports ``reference`` at module level: the worker must install the mutant first.
"""
