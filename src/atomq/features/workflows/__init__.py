"""Workflows: named graphs of steps, each step a job that runs once its dependencies succeed.

See :mod:`atomq.features.workflows.definitions` (defining), :mod:`atomq.features.workflows.service` (runs),
:mod:`atomq.features.workflows.steps` (the step job) and :mod:`atomq.features.workflows.reconcile`.
"""

from __future__ import annotations

from atomq.engine.plugins import Feature
from atomq.features.workflows.definitions import (
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

FEATURE = Feature(
    "workflows",
    tasks=("atomq.features.workflows.tasks",),
    hooks=("atomq.features.workflows.hooks",),
    periodic=("atomq.features.workflows.reconcile",),
    dashboard=("atomq.features.workflows.observe",),
    models=("atomq.features.workflows.models",),
)
