"""Development helpers shared by the tests, the benchmarks and the scripts; never installed with
the service (not in the wheel's packages)."""
