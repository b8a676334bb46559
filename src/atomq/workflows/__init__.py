"""Workflows: named graphs of steps, each step a job that runs once its dependencies succeed.

See :mod:`atomq.workflows.definitions` (defining), :mod:`atomq.workflows.service` (runs),
:mod:`atomq.workflows.steps` (the step job) and :mod:`atomq.workflows.reconcile`.
"""

from __future__ import annotations

from atomq.workflows.definitions import (
    Step,
    Workflow,
    WorkflowDefinitionError,
    load_file,
    register_workflow,
    registered_workflows,
    workflow,
)

__all__ = [
    "Step",
    "Workflow",
    "WorkflowDefinitionError",
    "load_file",
    "register_workflow",
    "registered_workflows",
    "workflow",
]
