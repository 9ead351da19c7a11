"""dtq: a distributed task queue built as an actor framework."""
