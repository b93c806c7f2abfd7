"""The laptop profile's Dagster instance: the `dagster.yaml` `ml-platform` writes into a
new DAGSTER_HOME, and the defaults earlier versions wrote (upgraded; a file a person
edited is never touched)."""

_NUX = """\
# Dagster's "Join the community" dialog covers the first page a newcomer opens.
nux:
  enabled: false

"""
DAGSTER_YAML = f"""\
# Embedded default instance: SQLite storage under this directory.
telemetry:
  enabled: false

{_NUX}# The daemon fails a run whose worker never started (start_timeout_seconds) and ends a
# cancellation that never finishes (cancel_timeout_seconds). The laptop's run launcher
# cannot say whether a started run's process is alive: `ml-platform up` marks runs left
# STARTED by a process that is gone failed when it starts (ml_assets/orphans.py). No
# runtime limit: training on a big table has no natural bound (tag a job with
# dagster/max_runtime to set one).
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  max_resume_run_attempts: 0
  poll_interval_seconds: 30
"""
# Defaults written by earlier versions, replaced by DAGSTER_YAML (never a user's file):
# the first (telemetry only), then the same file before the nux setting.
_OLD_DAGSTER_YAMLS = (DAGSTER_YAML.split("\n\n", 1)[0] + "\n",
                      DAGSTER_YAML.replace(_NUX, ""))
