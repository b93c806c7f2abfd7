"""Open Inference Protocol (KServe V2) over REST, as KServe, Triton, MLServer and Seldon
clients speak it: server and model health and metadata, and inference on the served model.

Routes: `GET /v2`, `/v2/health/live`, `/v2/health/ready`, `/v2/models/{name}[/versions/
{version}]/ready` are open (like /health and /ready); model metadata and
`POST /v2/models/{name}[/versions/{version}]/infer` ask for the API key when one is set.
Only the served model answers: another name, or a registry version that is not the
served one, is a 404. Errors are `{"error": "<one sentence>"}`; `V2ErrorShape` gives the
shared parts of the app (body limit, auth, prediction-log 503, unmatched paths) that
shape on /v2 paths.

An infer request carries either one tensor per feature (shape [n] or [n, 1]; BYTES for
strings, BOOL for booleans, any FP/INT datatype for numbers) or, for models whose
features are all numbers, one numeric tensor of shape [n, n_features] in feature order.
Values are validated exactly as /predict validates them: every column goes through the
served model's own generated field validators (`RequestModels.record`), except where a
vectorised check decides the same answer for a clean column, or a clean all-number
request, at once (serving/protocols/v2/columns.py; a property test in
ml_assets_tests/api/test_open_inference.py checks they agree with /predict). Rows then
take the one prediction handler (serving/protocols/base.py), so they are
logged and counted like every other prediction. docs/open_inference.md has the details.

Modules: `types` (datatypes, output names, the OpenAPI message models), `errors` (the
protocol's error and the ASGI middleware that gives the app's shared errors its
shape), `columns` (a tensor's data and each feature column validated), `codec` (an
infer request's body to rows, answers to output tensors), `routes` (the endpoints).
"""
