"""Pipeline stages: one module per step, each an async ``(ctx, call_next) -> Outcome``."""
