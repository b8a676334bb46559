"""Scheduled social-media posts: durable records, publishers, exactly-once publishing.

* :mod:`~atomq.features.posts.models` - accounts and posts (SQLAlchemy), the source of truth;
* :mod:`~atomq.features.posts.service` / :mod:`~atomq.features.posts.accounts` - what the API and CLI call;
* :mod:`~atomq.features.posts.publishing` - the state machine that publishes a post at most once
  (async; its database steps in :mod:`~atomq.features.posts.attempts`, run off the event loop
  by :mod:`~atomq.features.posts.offloop`);
* :mod:`~atomq.features.posts.publishers` - Mastodon, signed webhooks, the local outbox, on one
  pooled HTTP client per event loop (:mod:`~atomq.features.posts.publishers.clients`);
* :mod:`~atomq.features.posts.netguard` - the allowlist, checked when saving and when connecting;
* :mod:`~atomq.features.posts.ratelimit` - per-account limits shared by every worker (Redis, Lua);
* :mod:`~atomq.features.posts.reconciler` - makes Redis agree with the database;
* :mod:`~atomq.features.posts.tasks` - the guide's ``process_scheduled_post`` task.

Nothing here knows about HTTP or the command line.
"""

from __future__ import annotations

from atomq.engine.plugins import Feature

FEATURE = Feature(
    "posts",
    tasks=("atomq.features.posts.tasks",),
    periodic=("atomq.features.posts.reconciler",),
    metrics=("atomq.features.posts.observe",),
    dashboard=("atomq.features.posts.observe",),
    models=("atomq.features.posts.models",),
)
