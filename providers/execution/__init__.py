"""Execution: a Decision's plan in, provider calls with retries, failover, budgets and events out."""
