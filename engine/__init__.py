"""modelroute's decision core: parse and compile .route policies, decide which model answers, explain why."""

import logging

from engine.api import Engine, compile_policy, compile_source
from engine.diagnostics import Diagnostic, PolicyError
from engine.runtime.budget import BudgetBook
from engine.runtime.decision import Decision, NoRouteError
from engine.runtime.pinned import PinError

# A library logs, the application decides where it goes (no stderr output unless logging is configured).
logging.getLogger("modelroute").addHandler(logging.NullHandler())

__all__ = [
    "BudgetBook",
    "Decision",
    "Diagnostic",
    "Engine",
    "NoRouteError",
    "PinError",
    "PolicyError",
    "compile_policy",
    "compile_source",
]
