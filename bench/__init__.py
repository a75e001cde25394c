"""The benchmark: taskctl's worker setup against stock RQ and Celery, on one Redis, in one run."""
