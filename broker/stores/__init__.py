"""Shared state behind small typed interfaces, with a memory and a Redis backend."""
