r"""Paired comparisons of two methods over shared seeds (the report's ``paired.md``).

For a pair ``A:B`` of methods on one dataset, the runs are paired by seed: only seeds
that both methods have count (a seed run for one method only is ignored), and ``n`` is
the number of shared seeds. For every Table 1 column (``Acc_max`` and the mean and
variance of the per-epoch accuracy above each epoch percentile) the per-seed difference
``d = A - B`` gives:

* the mean paired difference ``mean(d)``;
* its 95% confidence interval: a percentile bootstrap over the seed pairs
  (:func:`scipy.stats.bootstrap`, :data:`BOOTSTRAP_RESAMPLES` resamples, RNG seed
  :data:`BOOTSTRAP_SEED`, so the report is deterministic);
* the two-sided **paired t-test** p-value (:func:`scipy.stats.ttest_rel`): this is the
  test that marks a cell significant (``p <`` :data:`SIGNIFICANCE_LEVEL`);
* the two-sided Wilcoxon signed-rank p-value (:func:`scipy.stats.wilcoxon`, exact for
  small ``n`` without ties or zero differences), shown alongside. It is not the marking
  test because with ``n`` seeds its smallest possible two-sided exact p is ``2 / 2**n``:
  with ``n < 6`` it can never fall below 0.05, whatever the data (``n = 5``: 0.0625).

Degenerate differences: when every ``d`` is 0 both p-values are 1; when every ``d`` is
the same non-zero value the t statistic is infinite and its p is 0 (scipy's result).

Default pairs (:data:`DEFAULT_PAIRS`): each LRA variant vs the method it adds LRA to
(``lra_mb:mb_dfkd``, ``lra_pre:pre_dfkd``, ``lra_ema:mad``), then every method with
replay (``lra_mb``, ``lra_pre``, ``lra_ema``, ``mb_dfkd``, ``pre_dfkd``, ``mad``) vs
``dfkd``. ``python -m dfkd_jax.report --pairs=A:B,C:D`` replaces them.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
SIGNIFICANCE_LEVEL = 0.05
#: Fewest shared seeds for which a pair is compared.
MIN_SHARED_SEEDS = 2
REPLAY_METHODS = ("lra_mb", "lra_pre", "lra_ema", "mb_dfkd", "pre_dfkd", "mad")
DEFAULT_PAIRS = (("lra_mb", "mb_dfkd"), ("lra_pre", "pre_dfkd"), ("lra_ema", "mad"),
                 *((m, "dfkd") for m in REPLAY_METHODS))


def parse_pairs(text: str) -> tuple[tuple[str, str], ...]:
  """``"A:B,C:D"`` -> ``(("A", "B"), ("C", "D"))``.

  Raises:
    ValueError: an item that is not ``A:B`` with two different non-empty names.
  """
  pairs = []
  for item in text.split(","):
    parts = [p.strip() for p in item.split(":")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
      raise ValueError(f"--pairs item {item.strip()!r} is not METHOD_A:METHOD_B with two "
                       "different methods; pass e.g. --pairs=lra_mb:mb_dfkd,lra_mb:dfkd")
    pairs.append((parts[0], parts[1]))
  return tuple(dict.fromkeys(pairs))


@dataclasses.dataclass(frozen=True)
class Difference:
  """The paired difference ``A - B`` of one column over ``n`` shared seeds."""

  n: int
  mean: float
  ci_low: float
  ci_high: float
  t_p: float          # two-sided paired t-test p-value (the marking test).
  wilcoxon_p: float   # two-sided Wilcoxon signed-rank p-value.

  @property
  def significant(self) -> bool:
    return self.t_p < SIGNIFICANCE_LEVEL


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Difference:
  """Mean of ``a - b`` with its bootstrap CI and the paired t / Wilcoxon p-values.

  Args:
    a, b: the two methods' values, aligned by seed (at least 2 each).

  Raises:
    ValueError: lengths differ or fewer than :data:`MIN_SHARED_SEEDS` pairs.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or a.size < MIN_SHARED_SEEDS:
    raise ValueError(f"paired_difference needs two equal-length lists of at least "
                     f"{MIN_SHARED_SEEDS} values, got {a.shape} and {b.shape}")
  d = a - b
  ci = stats.bootstrap((d,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES,
                       confidence_level=CONFIDENCE, method="percentile",
                       rng=np.random.default_rng(BOOTSTRAP_SEED)).confidence_interval
  if np.all(d == 0):
    t_p = wilcoxon_p = 1.0
  else:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)   # Constant d: infinite t.
      t_p = float(stats.ttest_rel(a, b).pvalue)
      wilcoxon_p = float(stats.wilcoxon(d).pvalue)
  return Difference(n=int(d.size), mean=float(d.mean()), ci_low=float(ci.low),
                    ci_high=float(ci.high), t_p=t_p, wilcoxon_p=wilcoxon_p)


def column_values(run) -> dict[str, float]:
  """A run's Table 1 columns: ``acc_max``, ``mean_above_p<p>``, ``var_above_p<p>``.

  Args:
    run: a :class:`dfkd_jax.report.Run` (anything with ``acc_max`` and
      ``learning_evolution``).
  """
  out = {"acc_max": run.acc_max}
  for p, (mean, var) in run.learning_evolution.items():
    out[f"mean_above_p{p}"] = mean
    out[f"var_above_p{p}"] = var
  return out


def column_title(column: str) -> str:
  """The Table 1 header of a :func:`column_values` key."""
  if column == "acc_max":
    return "Acc_max"
  kind, p = column.split("_above_p")
  return f"{'μ' if kind == 'mean' else 'σ²'}[S_Acc] >{p}th"


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Method ``a`` vs method ``b`` on one dataset: ``{column: Difference}`` (``a - b``)."""

  a: str
  b: str
  seeds: tuple[int, ...]
  differences: dict[str, Difference]


def compare(by_method: Mapping[str, Sequence[Any]], a: str, b: str) -> Comparison | None:
  """Pairs the runs of ``a`` and ``b`` by seed; ``None`` under 2 shared seeds.

  Args:
    by_method: ``{method: [runs]}`` of one dataset (runs with ``seed``).
  """
  runs_a = {r.seed: r for r in by_method.get(a, ())}
  runs_b = {r.seed: r for r in by_method.get(b, ())}
  seeds = tuple(sorted(set(runs_a) & set(runs_b)))
  if len(seeds) < MIN_SHARED_SEEDS:
    return None
  values_a = [column_values(runs_a[s]) for s in seeds]
  values_b = [column_values(runs_b[s]) for s in seeds]
  columns = [c for c in values_a[0] if all(c in v for v in values_a + values_b)]
  return Comparison(a, b, seeds, {
      c: paired_difference([v[c] for v in values_a], [v[c] for v in values_b])
      for c in columns})


def _p_text(p: float) -> str:
  return "-" if math.isnan(p) else f"{p:.3g}"


def markdown(comparison: Comparison) -> str:
  """One pair's table: a row per column; significant rows' differences in bold with *."""
  lines = [f"### {comparison.a} − {comparison.b} (n = {len(comparison.seeds)} seeds: "
           f"{', '.join(map(str, comparison.seeds))})", "",
           "| Column | Mean difference | 95% bootstrap CI | paired t p | Wilcoxon p |",
           "|---|---|---|---|---|"]
  for column, d in comparison.differences.items():
    mean = f"{d.mean:+.2f}"
    if d.significant:
      mean = f"**{mean}** *"
    lines.append(f"| {column_title(column)} | {mean} | [{d.ci_low:+.2f}, "
                 f"{d.ci_high:+.2f}] | {_p_text(d.t_p)} | {_p_text(d.wilcoxon_p)} |")
  return "\n".join(lines) + "\n"


def csv_records(dataset: str, comparison: Comparison) -> list[dict[str, Any]]:
  """One flat record per column of one pair."""
  return [{"dataset": dataset, "method_a": comparison.a, "method_b": comparison.b,
           "column": column, "n": d.n, "seeds": " ".join(map(str, comparison.seeds)),
           "mean_difference": d.mean, "ci_low": d.ci_low, "ci_high": d.ci_high,
           "t_p": d.t_p, "wilcoxon_p": d.wilcoxon_p, "significant": int(d.significant)}
          for column, d in comparison.differences.items()]


def description() -> str:
  """The paragraph at the top of ``paired.md`` stating the method."""
  return (f"Paired by seed: only seeds both methods have count (n). Each cell is the "
          f"mean over seeds of A − B; the interval is a {CONFIDENCE:.0%} percentile "
          f"bootstrap over the seed pairs ({BOOTSTRAP_RESAMPLES} resamples, RNG seed "
          f"{BOOTSTRAP_SEED}). A difference is marked **bold** * when the two-sided "
          f"paired t-test gives p < {SIGNIFICANCE_LEVEL}; the two-sided Wilcoxon "
          "signed-rank p is shown alongside (with n < 6 seeds its exact p is at least "
          "2/2^n > 0.05, so it cannot reach significance).")
