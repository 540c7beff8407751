"""The math stage: rules as SymPy data (``Rule``, ``Family``) and the built-in catalog."""
from .metadata import Hyper, RuleError, State, t
from .rule import Family, Rule

__all__ = ["Family", "Hyper", "Rule", "RuleError", "State", "t"]
