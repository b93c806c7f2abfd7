"""Batch scoring: a day's input files validated, scored and checked before they are written."""
