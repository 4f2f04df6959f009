"""Data: MovieLens-100K loader, synthetic generator, silo partitioning, leave-one-out split."""

from fedrec.core.data.types import INTERACTION_COLUMNS, Dataset

__all__ = ["Dataset", "INTERACTION_COLUMNS"]
