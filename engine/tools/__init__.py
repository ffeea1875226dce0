"""Policy tools: read-only users of a compiled policy (explain, render, lint, test, diff, graph)."""
