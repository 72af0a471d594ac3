"""The same job over a Ray Dataset with one rate budget for the cluster (`batchpizza.ray`).

    budget.py   the controller's logic: send slots in leases, the learned rate, the breaker, the
                deadline (no Ray import: tested with a fake clock)
    parts.py    the checkpoint on shared storage: answered rows in Parquet parts keyed by row id
    worker.py   what runs in each actor: the engine over each Arrow batch, its answers in parts
    command.py  `batchpizza run ... --ray`: the command line's options on a cluster
    folders.py  the input's and the checkpoint's ids, the output's parts written aside
    summary.py  what a cluster run came to, as the single-process run's Summary
    driver.py   the driver's signals, and the mock server in a process of its own

Ray itself is imported only by batchpizza.ray, which wires these into actors, and by command.py
once a run needs the cluster.
"""
