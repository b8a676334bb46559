"""Logging (and, later, metrics) for every atomq process."""
