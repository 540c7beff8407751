"""The derivation stage: derivatives from SymPy, checked and made cheap.

* :mod:`.elementwise` -- ``sympy.diff`` of elementwise losses and activations and
  the candidate forms of each derivative (:mod:`.simplify`); the code generator
  keeps the cheapest accurate one (:mod:`symopt.codegen.accuracy`, against
  :mod:`.mpeval`'s high-precision values).
* :mod:`.rowwise` -- softmax-style functions over indexed sums: derivation
  helpers (log-sum-exp rewriting) and per-row kernel plans.
* :mod:`.reverse` -- reverse-mode accumulation over a SymPy expression DAG.
* :mod:`.terms` -- large sums split into term shapes, one reverse sweep per shape.

Importing this package imports SymPy.
"""
