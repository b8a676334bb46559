"""Real local HTTP servers that stand in for outside services (Mastodon, webhook receivers).

Each runs in a thread of the test process on a free port of 127.0.0.1; the test starts it
and stops it (the fixtures do both). Workers, being separate processes, reach it over TCP
exactly as they would reach the real service.
"""
