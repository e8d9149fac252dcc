"""Budgets: what a limit is (``model``: scopes, limits, usage; no I/O) and which budgets a call is
charged to (``scopes``). Their state is in ``broker.stores`` (``budget_base`` and its backends)."""
