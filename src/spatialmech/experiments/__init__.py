"""Paper experiments, each a small module using tasks, adapters and the engine."""
