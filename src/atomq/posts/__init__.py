"""Scheduled social-media posts: durable records, publishers, exactly-once publishing.

* :mod:`~atomq.posts.models` - accounts and posts (SQLAlchemy), the source of truth;
* :mod:`~atomq.posts.service` / :mod:`~atomq.posts.accounts` - what the API and CLI call;
* :mod:`~atomq.posts.publishing` - the state machine that publishes a post at most once;
* :mod:`~atomq.posts.publishers` - Mastodon, signed webhooks, the local outbox;
* :mod:`~atomq.posts.ratelimit` - per-account limits shared by every worker (Redis, Lua);
* :mod:`~atomq.posts.reconciler` - makes Redis agree with the database;
* :mod:`~atomq.posts.tasks` - the guide's ``process_scheduled_post`` task.

Nothing here knows about HTTP or the command line.
"""
