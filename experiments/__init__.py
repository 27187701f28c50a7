"""CIFAR experiment harness for proxopt (Zhuang et al., TMLR 2022, arXiv 2202.00089).

One concern per subpackage: ``config`` (the :class:`~experiments.config.Config`
of a run) and ``configs`` (the paper's recipes), ``input_pipeline`` (tfds, npz
folders, the embedded sample, augmentation), ``models`` (Flax NNX ResNets /
DenseNet-BC), ``steps`` (jitted train/eval steps), ``kernels`` (oneDNN / chunked
CPU convolutions, built on request), ``training`` (loop, optimizer, on-device
metrics, Orbax checkpoints), ``study`` (the reproduction and depth studies),
``tools`` (sweeps, plots), ``toy`` (conditioning, trajectories, loss
multiplier), ``files`` (the one writer of result files). Entry points:
``python -m experiments.compare`` (the main job), ``python -m experiments.train``.
"""
