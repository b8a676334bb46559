"""The same two tasks (a no-op and a start-time recorder) for every system the engine
benchmark compares. Worker processes import these modules."""
