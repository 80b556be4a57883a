"""The team server: MLflow on a PostgreSQL of the project's own, and sweeps shared by workers on any machines."""
