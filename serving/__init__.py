"""The FastAPI prediction service of the ML platform (`python -m serving`)."""
