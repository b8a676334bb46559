"""Operations services: deleting jobs, backups and restores. No click and no HTTP in here;
``atomq/cli`` and ``atomq/api`` call these."""

from __future__ import annotations
