"""Hand-written NumPy reference steps, one module per catalog module.

Each module (``notes``, ``optax_compat``, ``torch_compat``, ``research``) holds one step
function per rule; ``tests/rule_db.py`` names each rule's function and the keyword sets
to test it with.  A step function is::

    fn(params, grads, state, t, **hyper) -> None

* ``params``, ``grads``: lists of float64 NumPy arrays, one per tensor; ``params``
  are updated in place;
* ``state``: a dict, empty before the first step, updated in place.  By convention
  ``state[key]`` is a list with one array per tensor, and ``key`` is the rule's
  ``state_dict`` key (``"exp_avg"``, ``"mu"``...), so tests can compare state too;
* ``t``: the 1-based step number;
* ``hyper``: every keyword argument of the rule, with the names the user passes to
  ``symopt.optimizer`` (``lr``, ``betas=(b1, b2)``, ``b1``, ``nesterov``...).
  Keyword defaults in ``fn``'s signature, when given, are checked against the
  rule's defaults.

References are written from the source formulas (the notes, the library's
documentation and code), not from symopt's rules.
"""
