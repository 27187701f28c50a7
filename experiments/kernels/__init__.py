"""CPU kernels for the train step: oneDNN's convolutions and batch
normalization through XLA FFI (:mod:`~experiments.kernels.onednn`,
:mod:`~experiments.kernels.batch_norm`; compiled only on request: ``python -m
experiments.kernels build`` or ``conv="onednn"``/``batch_norm="onednn"``) and
chunked weight gradients on XLA's (:mod:`~experiments.kernels.fastconv`)."""
