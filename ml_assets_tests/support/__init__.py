"""What the tests share: one API launcher, trained models, graph runs, local services."""
