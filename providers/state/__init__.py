"""Shared state: the Redis store (circuits, in-flight counts, spend) that replicas of the gateway share."""
