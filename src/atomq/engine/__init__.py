"""The engine: worker, supervisor, scheduler, recovery and the Redis scripts they share."""
