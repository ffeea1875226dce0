"""The runtime: a `CompiledPolicy` and a request in, a `Decision` out (evaluation, tokens, units, state protocols)."""
