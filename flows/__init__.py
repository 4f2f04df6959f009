"""Prefect flows: the pipeline as the user sees it."""
