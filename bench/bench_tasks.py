"""Tasks and workflows the benchmarks run (workers import this through ATOMQ_TASK_MODULES)."""

from __future__ import annotations

from typing import Any

from atomq import task
from atomq.features.workflows import Workflow, register_workflow

#: Steps in the benchmark's chain workflow.
CHAIN_STEPS = 40


@task("bench_noop")
def bench_noop(i: int = 0, results: dict[str, Any] | None = None) -> int:
    return i


chain = Workflow("bench_chain", description="A straight line of no-op steps.")
for _n in range(CHAIN_STEPS):
    chain.step(f"s{_n:03d}", "bench_noop", kwargs={"i": _n}, depends_on=[f"s{_n - 1:03d}"] if _n else [])
register_workflow(chain)
