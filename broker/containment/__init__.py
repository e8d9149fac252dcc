"""Containing a failing or overloaded upstream: circuit breakers and a bulkhead per agent."""
