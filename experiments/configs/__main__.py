"""``python -m experiments.configs``: the recipes as a Markdown table."""

from experiments.configs.recipes import table_markdown

print(table_markdown())
