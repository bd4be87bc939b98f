"""The engine's core: table declarations, batches, acks, batching and the pipeline runner.

Nothing here imports a database driver or does network I/O.
"""
