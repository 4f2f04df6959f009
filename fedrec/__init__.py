"""fedrec: cross-silo federated recommendation with encrypted aggregation.

Plain-Python domain layer (no Prefect imports): data, partitioning, validation,
models' training loops, metrics, federation strategies, CKKS encryption, the
payload exchange and MLflow tracking. ``flows/`` and ``tasks/`` orchestrate it.
"""

__version__ = "0.1.0"
