"""The same job over a Ray Dataset with one rate budget for the cluster (`batchpizza.ray`).

    budget.py   the controller's logic: send slots in leases, the learned rate, the breaker, the
                deadline (no Ray import: tested with a fake clock)
    parts.py    the checkpoint on shared storage: answered rows in Parquet parts keyed by row id
    worker.py   what runs in each actor: a Gatekeeper over leases, and a Job per Arrow batch

Ray itself is imported only by batchpizza.ray, which wires these into actors.
"""
