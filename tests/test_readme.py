"""The README's result tables are exactly what the committed reports generate."""
import pathlib

from experiments import readme_tables


def test_readme_tables_match_committed_reports():
  readme = (pathlib.Path(readme_tables.ROOT) / 'README.md').read_text()
  assert readme_tables.render(readme) == readme, 'run `python -m experiments.readme_tables`'
