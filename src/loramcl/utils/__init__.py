"""Run utilities: config printing, MLflow store handling, environment tweaks."""
