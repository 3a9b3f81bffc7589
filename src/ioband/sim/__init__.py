"""Deterministic discrete-event simulator: scenarios, device models, workloads, reports."""
