"""The engine: queues, the producer API, workers, the scheduler, Lua scripts and recovery.

It keeps RQ's data layout (``rq info``, ``Job.fetch`` and rq-dashboard read it) and knows no
feature: batches, long jobs, recurring jobs, workflows and posts plug in through
:mod:`~atomq.engine.plugins` and :mod:`~atomq.engine.hooks`. See docs/design.md.
"""
