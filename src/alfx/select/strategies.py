"""The strategies of ``alfx-select``: names, options, and EPIG with targets.

`make_strategy` checks a registry name and its ``--option`` values (before
any file is read) and returns the strategy: `alfx.get_strategy`'s, or, for
the EPIG strategies with ``--targets``, one that calls `alfx.epig`,
`alfx.batch_epig`, `alfx.kepig` or `alfx.stochastic_batch` on every one of
the given target rows (the registry's draws ``num_targets`` rows instead).

May import: `alfx` (the public API), `alfx.loop` (`strategy_descriptions`).
"""

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

#: Registry strategies that read ``embeddings`` (and class probabilities).
EMBEDDING_STRATEGIES = ("badge", "coreset", "typiclust")

#: Registry strategies scored against target inputs (``--targets``).
EPIG_STRATEGIES = ("epig", "batch-epig", "powerepig")

#: Options the EPIG strategies take when ``--targets`` gives the targets.
_TARGET_OPTIONS = {
  "epig": ("chunk_size",),
  "batch-epig": ("num_configurations", "chunk_size"),
  "powerepig": ("beta", "chunk_size"),
  "kepig": ("chunk_size",),
}


class UsageError(ValueError):
  """A flag the command cannot use; `main` prints it as one line (exit 2)."""


def needs_embeddings(name: str) -> bool:
  """Whether the registry strategy ``name`` reads embeddings.

  Example:
    >>> needs_embeddings("bait-full"), needs_embeddings("batchbald")
    (True, False)
  """
  return name in EMBEDDING_STRATEGIES or name.startswith("bait-")


def is_epig(name: str) -> bool:
  """Whether ``name`` is an EPIG strategy (takes ``--targets``).

  Example:
    >>> is_epig("kepig-2"), is_epig("kbald-2")
    (True, False)
  """
  return name in EPIG_STRATEGIES or name.startswith("kepig-")


def parse_option(text: str) -> tuple[str, Any]:
  """``"key=value"`` -> ``(key, value)``, the value as bool, None, int,
  float or str (in that order of trial).

  Example:
    >>> [parse_option(t) for t in ("beta=2", "lam=0.5", "method=auto")]
    [('beta', 2), ('lam', 0.5), ('method', 'auto')]
  """
  key, sep, value = text.partition("=")
  key = key.strip().replace("-", "_")
  if not sep or not key.isidentifier():
    raise UsageError(
      f"--option expects KEY=VALUE (e.g. beta=2.0), got {text!r}."
    )
  value = value.strip()
  if value.lower() in ("true", "false"):
    return key, value.lower() == "true"
  if value.lower() == "none":
    return key, None
  for kind in (int, float):
    try:
      return key, kind(value)
    except ValueError:
      pass
  return key, value


def parse_options(texts: Sequence[str]) -> dict[str, Any]:
  """``--option`` values as keyword arguments; a key given twice raises.

  Example:
    >>> parse_options(["beta=2", "num-configurations=100"])
    {'beta': 2, 'num_configurations': 100}
  """
  options: dict[str, Any] = {}
  for text in texts:
    key, value = parse_option(text)
    if key in options:
      raise UsageError(f"--option {key} is given twice.")
    options[key] = value
  return options


def make_strategy(
  name: str, options: dict[str, Any], *, with_targets: bool = False
) -> Callable[..., Any]:
  """``targets -> strategy``: the strategy ``name`` with ``options``.

  Args:
    name: a registry name (`alfx.strategy_names`).
    options: its options (`parse_options`).
    with_targets: the EPIG strategies score against given target
      predictions (``--targets``) instead of pool rows.

  Returns:
    A function of the ``float[M, K, C]`` target log-probabilities (None
    without ``with_targets``) that returns
    ``strategy(context, batch_size, *, key, mask) -> Selection``.

  Raises:
    UsageError: an unknown name (the valid ones are listed), an option the
      strategy does not take (its options are listed), ``with_targets`` for
      a strategy that is not EPIG.

  Example:
    >>> make_strategy("bald", {"beta": 1.0})
    Traceback (most recent call last):
    ...
    alfx.select.strategies.UsageError: --option: strategy 'bald' does not
    accept option(s) beta; valid options: none (it takes no options).
  """
  import alfx

  if name not in alfx.strategy_names():
    raise UsageError(
      f"unknown strategy {name!r}; valid names (--list describes them):"
      f" {', '.join(alfx.strategy_names())}."
    )
  if with_targets:
    if not is_epig(name):
      raise UsageError(
        "--targets is for the EPIG strategies (epig, batch-epig, kepig-2,"
        f" powerepig); {name!r} does not use target inputs."
      )
    return _targets_strategy(name, options)
  try:
    strategy = alfx.get_strategy(name, **options)
  except (ValueError, TypeError) as e:
    raise UsageError(f"--option: {e}") from None
  return lambda targets: strategy


def _targets_strategy(name: str, options: dict) -> Callable[..., Any]:
  """``targets -> strategy``: an EPIG strategy against given targets."""
  import alfx

  family = "kepig" if name.startswith("kepig-") else name
  if "num_targets" in options:
    raise UsageError(
      "--option num_targets sets how many targets are drawn from the pool;"
      " with --targets the file's M rows are the targets: drop it."
    )
  valid = _TARGET_OPTIONS[family]
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise UsageError(
      f"--option: strategy {name!r} with --targets does not accept"
      f" {', '.join(unknown)}; valid options: {', '.join(valid)}."
    )
  if family == "kepig":
    try:
      order = int(name.split("-", 1)[1])
    except ValueError:
      raise UsageError(f"cannot read the order of {name!r}.") from None
  else:
    order = 0

  def make(targets):
    def strategy(context, batch_size, *, key, mask):
      lp = context.log_probs
      if family == "batch-epig":
        return alfx.batch_epig(
          lp, targets, batch_size, key=key, mask=mask, **options
        )
      if family == "kepig":
        return alfx.kepig(
          lp, targets, batch_size, order=order, mask=mask, **options
        )
      scores = alfx.epig(lp, targets, chunk_size=options.get("chunk_size"))
      if family == "powerepig":
        return alfx.stochastic_batch(
          scores,
          batch_size,
          key=key,
          mode="power",
          beta=options.get("beta", 1.0),
          mask=mask,
        )
      return alfx.top_b(scores, batch_size, mask=mask)

    return strategy

  return make


def list_strategies() -> list[str]:
  """One line per registered strategy: name, description, what it needs.

  Example:
    >>> list_strategies()[0]
    'badge              k-means++ seeding ... [needs --embeddings]'
  """
  import alfx.loop  # strategy_descriptions is not in the flat API

  lines = []

  for name, text in alfx.loop.strategy_descriptions().items():
    needs = (
      " [needs --embeddings]"
      if needs_embeddings(name)
      else " [takes --targets]"
      if is_epig(name)
      else ""
    )
    lines.append(f"{name:18s} {text}{needs}")
  return lines
