"""Benchmarks: what mediation costs, measured side by side on loopback.

Run ``python -m benchmarks.run`` (``--quick`` for a short pass); it rewrites docs/benchmarks.md.
"""
