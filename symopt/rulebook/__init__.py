"""The math stage: rules as SymPy data (``Rule``, ``Family``) and the built-in catalog."""
from .rule import Family, Hyper, Rule, RuleError, State, t

__all__ = ["Family", "Hyper", "Rule", "RuleError", "State", "t"]
