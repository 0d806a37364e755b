"""ema-core's cross-framework benchmark (run with ``python -m benchmarks`` or ``make bench``)."""
