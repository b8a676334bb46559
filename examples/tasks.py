"""The tasks both example apps enqueue. Workers import them with
``ATOMQ_TASK_MODULES=examples.tasks atomq worker``; the apps import this module so that
enqueueing checks each call against the task's signature."""

from __future__ import annotations

import time

from atomq import PermanentError, task


@task("send_welcome_email", queue="default", retry=3)
def send_welcome_email(user_id: str) -> dict[str, str]:
    """Stand-in for a call to a mail service."""
    time.sleep(0.05)
    return {"sent_to": user_id}


@task("make_thumbnail", queue="high_priority", timeout=60)
def make_thumbnail(image_url: str, width: int = 128) -> dict[str, object]:
    """Stand-in for image work a request handler would rather not do itself."""
    if not image_url.startswith(("http://", "https://")):
        raise PermanentError(f"not an image URL: {image_url}")
    time.sleep(0.2)
    return {"image_url": image_url, "width": width, "thumbnail": f"{image_url}?w={width}"}
