"""ml_assets: the Dagster code location of the ML platform.

Import `ml_assets.definitions` for the Definitions object; the pure math lives
in `ml_assets.core` and has no Dagster import.
"""
