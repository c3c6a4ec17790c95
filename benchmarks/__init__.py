"""Benchmarks of fpt_peft: training cost and adapter handling (run as ``python -m benchmarks.<name>``)."""
