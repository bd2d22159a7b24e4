"""CPU tests; ``tests.support`` holds what they share with benchmarks/."""
