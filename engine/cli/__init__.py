"""The command line: the click application `modelroute`, with every command added here, explicitly."""

from engine.cli.app import check, explain, main
from engine.cli.keys import keys
from engine.cli.policy_tests import test_command
from engine.cli.serve import serve
from engine.cli.tools import catalog, diff_cmd, fmt, graph

for _command in (test_command, fmt, diff_cmd, graph, catalog, serve, keys):
    main.add_command(_command)

__all__ = ["check", "explain", "main"]
