"""Data: datasets, Pandera schemas (declared, inferred, diffed), preprocessing, provenance."""
