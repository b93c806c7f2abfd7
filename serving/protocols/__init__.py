"""The wire protocols the service speaks: its own JSON routes and MLflow's scoring server
(`native`, with MLflow's body formats in `mlflow`), and the Open Inference Protocol (`v2`)."""
