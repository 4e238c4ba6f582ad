"""Teacher jobs: augment, generate and preferences, with a cost ledger and a daily budget.

Orchestration: imports the core, the pipeline and the teacher plug-ins (`samctl teach`).
"""
