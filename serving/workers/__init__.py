"""Several uvicorn worker processes on one port (`python -m serving --workers N`,
ML_API_WORKERS=N > 1), kept consistent with each other.

The supervisor (`run_workers`, the `python -m serving` process) creates a fresh private
directory (`SharedDir`), exports it as PROMETHEUS_MULTIPROC_DIR and runs uvicorn's
multiprocess supervisor on the import string
`serving.workers.supervisor:create_worker_app`: each
worker is a spawned interpreter that builds its own app from the environment (its own
model copy, micro-batcher and prediction-log connection). The directory holds:

- prometheus-client's per-process value files (`*.db`): /metrics, on whichever worker
  answers it, merges them (serving/http/metrics.py); the supervisor marks a worker dead
  when it exits, so its live gauges go;
- `reload.generation`: written (atomically) when a worker swaps to a new version on
  its own (poll) or answers 200 to POST /admin/reload; every other worker reads it
  every SYNC_SECONDS and refreshes its store. A follow that does not end serving the
  generation's version (a load that failed, the registry down) is retried with backoff
  (RETRY_BACKOFF) until it does or a newer generation arrives;
- `reload.force`: the same, written only by POST /admin/reload?force=true (before the
  generation), so that a poll's bump that overwrites the generation within
  SYNC_SECONDS does not lose the force flag;
- `worker-<pid>.json`: each worker's prediction-log state, "serving" once its log is
  open, "closed" with its lost and spilled rows at shutdown. The supervisor turns
  them into the exit status: 1 when rows were lost, or when a worker ended without
  closing its log (the rows it held in memory are unaccounted for), as with one process;
- `supervisor.pid`: a worker whose supervisor is gone shuts itself down (no orphans).

The directory is removed when the supervisor exits.

Modules: `shared_dir` (the directory and its files), `sync` (a worker's side:
`WorkerSync`, the `WorkerHeaders` middleware, `swap_origin`), `supervisor` (the
`python -m serving` process: `run_workers`; and each worker's app factory).
"""

