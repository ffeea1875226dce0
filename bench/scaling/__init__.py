"""Sections of bench/scaling_bench.py that measure the bundled policy and hot reload (run through that script)."""
