"""The same tasks for every system the benchmarks compare: a no-op, a 100 ms I/O wait and a
start-time recorder. Worker processes import these modules."""
