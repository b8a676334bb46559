"""Fixtures shared by tests/ and reliability/ (a real redis-server per session, settings, CLI
runs, worker processes, databases, the API, scheduled-posts helpers): see testkit/."""

pytest_plugins = ["testkit.fixtures", "testkit.posts", "testkit.acl", "testkit.browser"]
