"""Regenerates the result tables in README.md from the committed reports (never typed by hand).

    python -m experiments.readme_tables

Each table sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->` markers.
"""
from __future__ import annotations

import json
import pathlib
import re

from cnn_jax import models
from cnn_jax.models import published
from cnn_jax.report import markdown_table

ROOT = pathlib.Path(__file__).resolve().parents[1]


def lenet5_table() -> str:
  r = json.loads((ROOT / 'reports/lenet5_mnist/results.json').read_text())
  return markdown_table(
      ['experiment', 'claims', 'test accuracy', 'lecture', 'best epoch', 'wall time',
       'train images/s', 'hardware', 'command'],
      [[f"[{r['name']}](reports/lenet5_mnist/report.md)", 'C13-C15', f"{r['test_accuracy']:.2%}",
        'about 99%', f"{r['best_epoch']} of {r['epochs']}", f"{r['wall_time_s']:.0f} s",
        f"{r['train_images_per_s']:,.0f}",
        f"{r['device_count']} x {r['device_kind']}, host {r.get('host_cpu', '?')}",
        f"`{r['command']}`"]])


def params_table() -> str:
  data = json.loads((ROOT / 'reports/param_table/param_table.json').read_text())
  rows = []
  for m in data['models']:
    pub = published.PUBLISHED_PARAMS.get(m['model'])
    if pub is None or 'params' not in m:
      continue
    rows.append([m['model'], f"{m['params']:,}", f'{pub[0]:,}',
                 'exact' if m['params'] == pub[0] else f"{m['params'] - pub[0]:+,}",
                 f"{m['macs'] / 1e9:.2f}"])
  return markdown_table(['model', 'parameters (ours)', 'published', 'match', 'GMACs/image'], rows)


TABLES = {'lenet5_mnist': lenet5_table, 'param_counts': params_table}


def render(text: str) -> str:
  """`text` (README.md) with every generated table replaced by its current contents."""
  for name, fn in TABLES.items():
    pattern = re.compile(rf'(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)', re.S)
    if not pattern.search(text):
      raise SystemExit(f'README.md has no <!-- {name}:begin/end --> markers.')
    text = pattern.sub(lambda m, fn=fn: m.group(1) + fn() + '\n' + m.group(2), text)
  return text


def main() -> None:
  readme = ROOT / 'README.md'
  readme.write_text(render(readme.read_text()))
  print(f'updated {readme} ({", ".join(TABLES)}); {len(models.names())} models registered')


if __name__ == '__main__':
  main()
