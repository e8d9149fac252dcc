"""Anomaly alerts: rules judged on the live stream of decisions, with their state in the store.

``AlertRules`` (rules.py) judges a batch of finished requests against the store's history;
``Alerts`` (service.py) queues requests off the hot path, runs the rules and the periodic budget
check, and raises each alert as an audit record, a metric, a kept alert for the console and an
optional signed webhook (webhook.py). docs/observability.md lists the rules.
"""
