"""Orchestration beside the Prefect flows: launching silo agents (local hosts or deployments), the silo host
process, MLflow tracking, the centralized baseline, operations (deploy, UI, retention)."""
