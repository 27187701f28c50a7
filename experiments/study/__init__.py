"""The reproduction study of Zhuang et al. (TMLR 2022): ``spec`` (which runs),
``runner`` (launches them as ``python -m experiments.train`` processes),
``report`` (tables and figures). Entry point: ``python -m experiments.study``."""
