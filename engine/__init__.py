"""modelroute's decision core: parse and compile .route policies, decide which model answers, explain why."""

from engine.api import Engine, compile_policy, compile_source
from engine.decision import Decision, NoRouteError
from engine.diagnostics import Diagnostic, PolicyError

__all__ = [
    "Decision",
    "Diagnostic",
    "Engine",
    "NoRouteError",
    "PolicyError",
    "compile_policy",
    "compile_source",
]
