"""Pure functions of the platform: datasets, schemas, features, models, metrics.

Nothing in this package imports Dagster, so it is what unit tests and
benchmarks exercise directly and what a plain Python script can call.
"""
