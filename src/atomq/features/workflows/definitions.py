"""Workflow definitions: named graphs of steps, defined in Python or in JSON/YAML files.

In Python, with the builder or the decorator::

    etl = Workflow("etl").step("extract", "fetch_rows", kwargs={"table": "posts"})
    etl.step("transform", "clean_rows", depends_on=["extract"], retry=Retry(max=3))
    register_workflow(etl)

    @workflow("diamond")
    def diamond(w: Workflow) -> None:
        w.step("A", "load").step("B", "left", depends_on=["A"]).step("C", "right", depends_on=["A"])
        w.step("D", "merge", depends_on=["B", "C"])

As a file (``atomq workflows load FILE`` checks it and stores it)::

    name: diamond
    steps:
      - {name: A, task: load}
      - {name: B, task: left, depends_on: [A], retry: {max: 3, delay: 2}}

A step's task is called with the step's ``kwargs``, plus ``input`` (the run's input) when
the task has a parameter of that name, plus ``results`` (``{step name: result}`` of the steps
it depends on) when it has that one. Each step runs as a job as soon as every step it
depends on has succeeded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomq.core.errors import AtomqError, ConfigurationError, InvalidInputError
from atomq.core.files import read_data_file
from atomq.core.options import check_json, validate_queue_name
from atomq.engine.tasks import Retry, TaskRegistry

#: Workflow and step names: they appear in job ids, URLs and logs.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")

#: Most steps one workflow may have.
MAX_STEPS = 500

#: The queue step jobs go to unless the workflow or the step says otherwise.
DEFAULT_QUEUE = "workflows"


class WorkflowDefinitionError(InvalidInputError):
    """A workflow definition is malformed: the message names the workflow and the step."""

    code = "invalid_workflow"


@dataclass(frozen=True)
class Step:
    """One step: a registered task, its arguments, and the steps it waits for."""

    name: str
    task: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    retry: Retry | None = None
    timeout: int | None = None
    queue: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "task": self.task, "kwargs": dict(self.kwargs)}
        data["depends_on"] = list(self.depends_on)
        if self.retry is not None:
            data["retry"] = {
                "max": self.retry.max,
                "delay": self.retry.delay,
                "backoff": self.retry.backoff,
                "max_delay": self.retry.max_delay,
                "jitter": self.retry.jitter,
            }
        if self.timeout is not None:
            data["timeout"] = self.timeout
        if self.queue is not None:
            data["queue"] = self.queue
        return data


@dataclass
class Workflow:
    """A named graph of steps. Build it with :meth:`step`; check it with :meth:`validate`."""

    name: str
    description: str = ""
    queue: str = DEFAULT_QUEUE
    steps: list[Step] = field(default_factory=list)

    def step(
        self,
        name: str,
        task: str,
        *,
        kwargs: Mapping[str, Any] | None = None,
        depends_on: Sequence[str] = (),
        retry: Retry | int | None = None,
        timeout: int | None = None,
        queue: str | None = None,
    ) -> Workflow:
        """Add a step (returns the workflow, so calls chain)."""
        try:
            policy = Retry.coerce(retry)
        except ConfigurationError as exc:
            raise WorkflowDefinitionError(f"workflow {self.name!r} step {name!r}: {exc.message}") from None
        if isinstance(depends_on, str):
            depends_on = [depends_on]
        self.steps.append(Step(name, task, dict(kwargs or {}), tuple(depends_on), policy, timeout, queue))
        return self

    def get(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def validate(self, registry: TaskRegistry | None = None) -> Workflow:
        """Check names, dependencies and cycles; with ``registry``, also tasks and arguments.

        Raises :class:`WorkflowDefinitionError` naming the workflow and the offending step.
        """
        where = f"workflow {self.name!r}"
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise WorkflowDefinitionError(
                f"invalid workflow name {self.name!r}: use 1-64 letters, digits, '_', '.' or '-'",
                field="name",
            )
        if not self.steps:
            raise WorkflowDefinitionError(f"{where} has no steps", field="steps")
        if len(self.steps) > MAX_STEPS:
            raise WorkflowDefinitionError(f"{where} has more than {MAX_STEPS} steps", field="steps")
        _check_queue(self.queue, where)
        seen: set[str] = set()
        for step in self.steps:
            label = f"{where} step {step.name!r}"
            if not isinstance(step.name, str) or not NAME_PATTERN.fullmatch(step.name):
                raise WorkflowDefinitionError(
                    f"{where}: invalid step name {step.name!r} (1-64 letters, digits, '_', '.' or '-')",
                    field="steps",
                )
            if step.name in seen:
                raise WorkflowDefinitionError(f"{where}: step {step.name!r} is defined twice", field="steps")
            seen.add(step.name)
            if step.timeout is not None and (isinstance(step.timeout, bool) or step.timeout <= 0):
                raise WorkflowDefinitionError(f"{label}: timeout must be positive seconds", field="steps")
            if step.queue is not None:
                _check_queue(step.queue, label)
        for step in self.steps:
            for dependency in step.depends_on:
                if dependency not in seen:
                    raise WorkflowDefinitionError(
                        f"{where} step {step.name!r} depends on {dependency!r}, which is not a step",
                        field="steps",
                    )
                if dependency == step.name:
                    raise WorkflowDefinitionError(
                        f"{where} step {step.name!r} depends on itself", field="steps"
                    )
        cycle = find_cycle(self)
        if cycle:
            raise WorkflowDefinitionError(
                f"{where} has a cycle: {' -> '.join(cycle)} (step {cycle[0]!r} can never start)",
                field="steps",
            )
        if registry is not None:
            self._check_tasks(registry)
        return self

    def _check_tasks(self, registry: TaskRegistry) -> None:
        for step in self.steps:
            label = f"workflow {self.name!r} step {step.name!r}"
            if step.task not in registry:
                known = ", ".join(spec.name for spec in registry) or "none"
                raise WorkflowDefinitionError(
                    f"{label}: no task is registered as {step.task!r} (registered: {known})", field="steps"
                )
            spec = registry.get(step.task)
            trial = dict(step.kwargs)
            params = spec.signature.parameters
            for extra in ("input", "results"):
                if extra in params:
                    trial[extra] = None
            try:
                spec.bind((), trial)
            except AtomqError as exc:
                raise WorkflowDefinitionError(f"{label}: {exc.message}", field="steps") from None

            try:
                check_json(dict(step.kwargs), "kwargs")
            except AtomqError as exc:
                raise WorkflowDefinitionError(f"{label}: {exc.message}", field="steps") from None

    def to_dict(self) -> dict[str, Any]:
        """The definition as JSON-ready data (what a run stores and a file holds)."""
        return {
            "name": self.name,
            "description": self.description,
            "queue": self.queue,
            "steps": [step.to_dict() for step in self.steps],
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "definition") -> Workflow:
        """Read a definition (from a file or the database), refusing malformed parts by name."""
        if not isinstance(data, Mapping):
            raise WorkflowDefinitionError(f"{source}: a workflow must be a mapping with name and steps")
        unknown = set(data) - {"name", "description", "queue", "steps"}
        if unknown:
            raise WorkflowDefinitionError(f"{source}: unknown keys {sorted(unknown)}", field="workflow")
        name = data.get("name")
        if not isinstance(name, str):
            raise WorkflowDefinitionError(f"{source}: 'name' must be a string", field="name")
        steps = data.get("steps")
        if not isinstance(steps, list):
            raise WorkflowDefinitionError(f"{source}: workflow {name!r} needs a list of steps", field="steps")
        workflow = cls(name, str(data.get("description") or ""), data.get("queue") or DEFAULT_QUEUE)
        for index, raw in enumerate(steps):
            workflow._add_raw_step(raw, index, source)
        return workflow

    def _add_raw_step(self, raw: Any, index: int, source: str) -> None:
        label = f"{source}: workflow {self.name!r} step {index + 1}"
        if not isinstance(raw, Mapping):
            raise WorkflowDefinitionError(f"{label} must be a mapping", field="steps")
        step_name = raw.get("name")
        if isinstance(step_name, str):
            label = f"{source}: workflow {self.name!r} step {step_name!r}"
        unknown = set(raw) - {"name", "task", "kwargs", "depends_on", "retry", "timeout", "queue"}
        if unknown:
            raise WorkflowDefinitionError(f"{label}: unknown keys {sorted(unknown)}", field="steps")
        task = raw.get("task")
        if not isinstance(task, str) or not isinstance(step_name, str):
            raise WorkflowDefinitionError(f"{label} needs a 'name' and a 'task' (strings)", field="steps")
        kwargs = raw.get("kwargs") or {}
        depends = raw.get("depends_on") or []
        if isinstance(depends, str):
            depends = [depends]
        if not isinstance(kwargs, Mapping) or not isinstance(depends, list):
            raise WorkflowDefinitionError(
                f"{label}: 'kwargs' must be a mapping and 'depends_on' a list", field="steps"
            )
        retry = raw.get("retry")
        if isinstance(retry, Mapping):
            try:
                retry = Retry(**retry)
            except (TypeError, ConfigurationError) as exc:
                raise WorkflowDefinitionError(f"{label}: bad retry: {exc}", field="steps") from None
        try:
            self.step(
                step_name,
                task,
                kwargs=kwargs,
                depends_on=[str(d) for d in depends],
                retry=retry,
                timeout=raw.get("timeout"),
                queue=raw.get("queue"),
            )
        except WorkflowDefinitionError as exc:
            raise WorkflowDefinitionError(f"{label}: {exc.message}", field="steps") from None


def _check_queue(name: str, where: str) -> None:
    try:
        validate_queue_name(name)
    except AtomqError as exc:
        raise WorkflowDefinitionError(f"{where}: {exc.message}", field="queue") from None


def find_cycle(workflow: Workflow) -> list[str] | None:
    """A dependency cycle as ``[a, b, ..., a]``, or None."""
    graph = {step.name: list(step.depends_on) for step in workflow.steps}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for name in graph:
        if state.get(name) is None:
            found = visit(name)
            if found:
                return found
    return None


# -- files ---------------------------------------------------------------------------------


def load_file(path: str | Path) -> list[Workflow]:
    """Workflows from a JSON or YAML file (one mapping, or a list of them), structure checked."""
    path = Path(path)
    try:
        data = read_data_file(path)
    except ValueError as exc:
        raise WorkflowDefinitionError(str(exc), field="file") from None
    items = data if isinstance(data, list) else [data]
    return [Workflow.from_dict(item, source=str(path)).validate() for item in items]


# -- the in-code registry ------------------------------------------------------------------

_registry: dict[str, Workflow] = {}


def register_workflow(workflow: Workflow) -> Workflow:
    """Make ``workflow`` available by name (its structure is checked now, its tasks at use)."""
    workflow.validate()
    _registry[workflow.name] = workflow
    return workflow


def workflow(
    name: str, *, description: str = "", queue: str = DEFAULT_QUEUE
) -> Callable[[Callable[[Workflow], object]], Workflow]:
    """Decorator: the function receives an empty :class:`Workflow` and adds its steps."""

    def decorate(func: Callable[[Workflow], object]) -> Workflow:
        built = Workflow(name, description or (func.__doc__ or "").strip(), queue)
        func(built)
        return register_workflow(built)

    return decorate


def registered_workflows() -> dict[str, Workflow]:
    """Workflows defined in code, by name."""
    return dict(_registry)
