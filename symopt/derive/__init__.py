"""The derivation stage: derivatives from SymPy, and the forms they may take.

* :mod:`.elementwise` -- ``sympy.diff`` of elementwise losses and activations, the
  candidate forms of each derivative (:mod:`.simplify`) and the check points where
  :mod:`.mpeval`'s high-precision values judge them.
* :mod:`.rowwise` -- softmax-style functions over indexed sums: log-sum-exp
  rewriting, sums as row reductions.
* :mod:`.reverse` -- reverse-mode accumulation over a SymPy expression DAG: the
  forward and reverse sweeps of ``symopt.gradient``.

What the kernels run (the cheapest accurate form, CSE, row passes, term shapes,
operation counts) is planned by :mod:`symopt.codegen.plan_gradients`.
Importing this package imports SymPy.
"""
