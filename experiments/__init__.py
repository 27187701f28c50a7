"""CIFAR experiment harness for proxopt (Zhuang et al., TMLR 2022, arXiv 2202.00089).

Laid out like a Flax example:

- ``train.py``: the command line (``python -m experiments.train``), one flag per
  field of the :class:`~experiments.configs.Config`;
- ``configs/``: that ``Config`` (``default.py``) and the paper's recipes;
- ``training/``: the loop (``loop.py``), the loss and the train/eval steps
  (``train_step.py``, XLA only), the optimizer, metrics, checkpoints;
- ``input_pipeline/``: CIFAR from tfds, npz folders or the embedded sample;
  augmentation;
- ``models/``: Flax NNX ResNets and DenseNet-BC;
- ``kernels/``: the CPU speed layer (oneDNN convolutions and BatchNorm, fused
  ReLUs, chunked weight gradients, no-fusion and blockwise steps, host memory),
  reached only through ``training.loop.make_steps``, on a CPU backend;
- ``compare.py`` (the main job), ``study/`` (depth and published-settings
  studies, reproduction report), ``toy/`` (conditioning, trajectories, loss
  multiplier), ``tools/`` (sweeps, plots), ``files.py`` (the one writer of
  result files).
"""
