"""The bottom layer: what every other part of atomq builds on, and nothing above it.

Errors (:mod:`~atomq.core.errors`), settings (:mod:`~atomq.core.settings`), Redis
connections (:mod:`~atomq.core.connection`), every Redis key name (:mod:`~atomq.core.keys`),
the rules for what callers may pass (:mod:`~atomq.core.options`), logging and time helpers.
"""
