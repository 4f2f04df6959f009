"""Data: MovieLens-100K loader, synthetic generator, silo partitioning, leave-one-out split."""

from fedrec.data.types import Dataset, INTERACTION_COLUMNS

__all__ = ["Dataset", "INTERACTION_COLUMNS"]
