"""The training loop (:mod:`~experiments.training.loop`) and what it is made
of: the train and eval steps (:mod:`~experiments.training.train_step`), the optimizer (:mod:`~experiments.training.optimizer`), on-device metrics
(:mod:`~experiments.training.metrics`), Orbax checkpoints
(:mod:`~experiments.training.checkpoint`) and the run directory
(:mod:`~experiments.training.run_dir`). Entry point: ``python -m
experiments.train``."""
