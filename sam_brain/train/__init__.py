"""Training orchestration: dataset, run, supervised worker subprocess, scheduling, the release gate."""
