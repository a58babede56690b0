"""The performance suite: ``python -m benchmarks`` (``make bench``); see benchmarks/README.md."""
