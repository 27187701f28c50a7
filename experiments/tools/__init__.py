"""Tools on top of training runs: figures (:mod:`~experiments.tools.plot`),
learning-rate x weight-decay grids (:mod:`~experiments.tools.sweep`), and how
far Adam's second moment is from the current gradients
(:mod:`~experiments.tools.second_moment`)."""
