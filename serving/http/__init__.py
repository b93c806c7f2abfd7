"""The HTTP plumbing shared by every route: ASGI middleware (request id, metrics, body
limit), request guards, API-key auth, response models, and the Prometheus metrics."""
