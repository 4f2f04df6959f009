"""What runs at the coordinator: admission, the round, strategies, checkpoints, the summary. It never holds a
secret key or a silo's data."""
