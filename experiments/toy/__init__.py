"""Small studies that run in seconds: the loss multiplier (:mod:`~experiments.toy.loss_multiplier`,
AdamW's trajectory is unchanged when the loss is multiplied, Adam-L2's moves),
conditioning (:mod:`~experiments.toy.conditioning`, flat vs growing steps) and
step-size trajectories (:mod:`~experiments.toy.trajectories`)."""
