"""Human approval as a circuit breaker: calls the policy marks ``approve`` wait for a person.

``desk`` keeps the requests and decisions (store, audit, notification), ``webhook`` tells a
chat bot or ticketing system, ``stages`` holds calls in the pipelines (docs/approvals.md).
"""
