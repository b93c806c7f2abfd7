"""Modeling: tasks, estimators, the fitted Pipeline, metrics, tuning."""
