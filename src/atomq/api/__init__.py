"""The HTTP API (FastAPI): thin routes over atomq's service functions, under ``/api/v1``."""

from __future__ import annotations

from atomq.api.app import create_app

__all__ = ["create_app"]
