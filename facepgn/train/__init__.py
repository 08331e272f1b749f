"""Training, in a small vocabulary both loops share.

``plan`` (preflight checks), ``datasets`` (batch sources: local Parquet, Ray Data; ``rows``: the
row operations Ray Data runs on the inputs), ``data``
(records -> tensors), ``state`` (model, optimiser, schedule, scaler, step, epoch), ``optim``,
``step`` (THE optimisation step), ``epoch`` (the loop body: ``train_epoch`` / ``fit`` with hooks),
``validation``, ``checkpoint``, ``tensorboard``; then ``loop`` (the plain loop), ``ray_trainer``
(Ray Train driver and worker) and ``tune`` (Ray Tune sweeps).
"""
