"""CPU convolution kernels for the train step: oneDNN's through XLA FFI
(:mod:`~experiments.kernels.onednn`, compiled only on request: ``python -m
experiments.kernels build`` or ``conv="onednn"``) and chunked weight
gradients on XLA's (:mod:`~experiments.kernels.fastconv`)."""
