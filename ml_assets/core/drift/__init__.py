"""Drift: the reference profile, per-feature statistics, day scoring."""
