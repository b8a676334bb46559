"""Features built on the engine: batches, long-running jobs, recurring jobs, workflows and
scheduled social-media posts.

Each declares what it plugs in (tasks, job hooks, periodic duties, metrics, dashboard
sections, models) in its package's ``FEATURE``, published as an ``atomq.features`` entry
point (see :mod:`atomq.engine.plugins`). Features know nothing of HTTP or the command line,
and none imports another except through the engine.
"""
