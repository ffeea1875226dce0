"""Parts of bench/speed_bench.py (inputs, timing, sections): prompts and policies in, report lines out."""
