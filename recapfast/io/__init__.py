"""Files out: atomic writes, output locks, checkpoints and their validation."""
