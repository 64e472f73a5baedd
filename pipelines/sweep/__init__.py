"""The sweep's two halves behind ``pipelines/run_hpo.py``: ``local`` (Optuna over offline train steps on this machine)
and ``server`` (ClearML's HyperParameterOptimizer over clones of a train task, then the winner's evaluation and registration)."""
