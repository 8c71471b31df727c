"""The error every user mistake in a config becomes, and the "did you mean" it names.

A leaf module: the models, datasets and the config schema all raise ConfigError.
"""
from __future__ import annotations

import difflib
import numbers
from typing import Any, Iterable


class ConfigError(ValueError):
  """A config key or value that the schema or the model does not allow.

  The message names the key, the nearest valid keys or values and, where there is one, the fix.
  The command line prints it without a traceback (exit code 2).
  """


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> None:
  """ConfigError naming the nearest allowed value unless `value` is one of `allowed`."""
  allowed = tuple(allowed)
  if value not in allowed:
    raise ConfigError(f'config.{key}={value!r} is not valid.{did_you_mean(value, allowed)} '
                      f'Valid values: {", ".join(map(repr, allowed))}.')


def nearest(value: Any, candidates: Iterable[Any], n: int = 3) -> list[Any]:
  """The candidates closest to `value`: numbers by distance, strings by spelling.

  Close spellings (difflib's ratio >= 0.6) first; when none is that close, the single closest
  candidate, so an error can always name one.
  """
  candidates = list(candidates)
  if not candidates:
    return []
  if isinstance(value, numbers.Number) and not isinstance(value, bool):
    numeric = [c for c in candidates if isinstance(c, numbers.Number)]
    return sorted(numeric, key=lambda c: abs(c - value))[:1]
  text = str(value)
  ratio = lambda c: difflib.SequenceMatcher(None, text, str(c)).ratio()
  ranked = sorted(candidates, key=ratio, reverse=True)
  close = [c for c in ranked if ratio(c) >= 0.6][:n]
  return close or ranked[:1]


def did_you_mean(value: Any, candidates: Iterable[Any]) -> str:
  best = nearest(value, candidates)
  return f" Did you mean {' or '.join(map(repr, best))}?" if best else ''
