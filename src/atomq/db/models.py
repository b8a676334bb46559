"""Where every domain's models are registered with the metadata (for Alembic and tests).

Domain packages own their models; this list only makes sure they are imported before the
metadata is inspected. Add a module here when a domain adds models.
"""

from __future__ import annotations

import importlib

#: Modules defining SQLAlchemy models.
MODEL_MODULES: tuple[str, ...] = ("atomq.features.posts.models", "atomq.features.workflows.models")


def import_all_models() -> None:
    """Import every model module so ``Base.metadata`` knows every table."""
    for module in MODEL_MODULES:
        importlib.import_module(module)
