"""The compiled flavour of a served Pipeline: the whole Pipeline (preprocessing included)
as one ONNX graph run by ONNX Runtime, and the parity gate it must pass to be served.

Pure: no Dagster, no MLflow, no service code. No facade: import each name from the module
that owns it.

- `contract`: what the converter and the loader agree on (the graph's inputs, outputs,
  missing-value strings, metadata keys, versions) and the two errors.
- `columns`: a feature column's kind, and the dtypes a served row reaches the Pipeline in.
- `convertible`: what skl2onnx would refuse, or convert with other semantics.
- `custom_converters`: skl2onnx converters for SimpleImputer and OneHotEncoder that keep
  scikit-learn's semantics on missing values.
- `hist_gradient_boosting`: HistGradientBoosting as one TreeEnsemble (ai.onnx.ml 5) with
  float64 thresholds, leaf values and sums.
- `boosters`: onnxmltools' LightGBM and XGBoost converters registered with skl2onnx.
- `convert`: `compile_pipeline`, a fitted Pipeline to ONNX bytes.
- `graph_check`: what makes an untrusted graph acceptable (operator allowlist, no
  subgraphs, no external data, size caps, inputs and outputs of the served model).
- `runtime`: `CompiledModel`, a checked graph's ONNX Runtime session predicting from the
  service's rows or a DataFrame, and `near_ties`.
- `parity`: `check_parity`, the graph against the Pipeline on held-out and probe rows,
  and its `ParityReport`.
- `gate`: `compile_and_check`, all three in one; never raises for a conversion or parity
  problem: the report says what happened.

Dependencies go one way (each module imports only those before it): contract, columns,
boosters, convertible, custom_converters, hist_gradient_boosting, convert; graph_check,
runtime; parity (runtime, columns); gate (convert, runtime, parity).
"""
