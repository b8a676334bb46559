"""What the surfaces (CLI, API, dashboard) share to operate atomq: reading queues and workers
(:mod:`~atomq.ops.monitor`, :mod:`~atomq.ops.overview`), changing them
(:mod:`~atomq.ops.admin`), submitting jobs from plain values (:mod:`~atomq.ops.submission`),
metrics, ``doctor``, backups and restores.
"""
