"""Versioning (DVC) and experiment tracking (MLflow)."""
