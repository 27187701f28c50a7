"""The training loop (:mod:`~experiments.training.loop`) and what it is made
of: the optimizer (:mod:`~experiments.training.optimizer`), on-device metrics
(:mod:`~experiments.training.metrics`), Orbax checkpoints
(:mod:`~experiments.training.checkpoint`) and the run directory
(:mod:`~experiments.training.run_dir`). Entry point: ``python -m
experiments.train``."""
