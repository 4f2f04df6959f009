"""Federation: strategies (FedAvg, FedProx), the pure aggregation math, the encryption filters,
and the silo-side round (train locally, evaluate locally)."""
