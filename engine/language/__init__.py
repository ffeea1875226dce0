"""The policy language: `.route` text in, our own AST out (`parse`, `load` with includes, `fmt`, `nodes`)."""
