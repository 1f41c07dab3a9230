"""The benchmark suite: ``python -m benchmarks.run [--quick]`` prints markdown tables and writes PNG plots."""
