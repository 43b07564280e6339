"""Read models folded from the event log, with checkpoints."""
