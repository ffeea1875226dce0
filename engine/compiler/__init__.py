"""The compiler: an AST and a catalog in, an immutable `CompiledPolicy` out (`passes` checks, `codegen` builds)."""
