"""Tools on top of training runs: figures (:mod:`~experiments.tools.plot`) and
learning-rate x weight-decay grids (:mod:`~experiments.tools.sweep`)."""
