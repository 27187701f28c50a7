"""``python -m experiments.configs``: the recipes as a Markdown table."""

import argparse

from experiments.configs.recipes import table_markdown

argparse.ArgumentParser(
    prog="python -m experiments.configs",
    description="Print the paper's recipes (use one with "
    "`python -m experiments.train --recipe NAME [--budget quick|paper]`).").parse_args()
print(table_markdown())
