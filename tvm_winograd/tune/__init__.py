"""Tuning: MetaSchedule search over our design spaces, per-layer algorithm choice, databases."""
