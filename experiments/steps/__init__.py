"""Train and eval steps (:mod:`~experiments.steps.train_step`): one jitted
step, an unfused one, or a per-block one, on XLA's or oneDNN's convolutions."""
