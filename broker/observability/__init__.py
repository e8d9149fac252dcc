"""What operators see: Prometheus metrics and the operator console.

The rest of the broker calls into this package through one-line hooks (``record``); the package
imports nothing of the pipeline's insides beyond the request contexts it is handed.
"""
