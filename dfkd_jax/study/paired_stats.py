r"""Paired comparisons of two methods over shared seeds (the report's ``paired.md``).

For a pair ``A:B`` of methods on one dataset, the runs are paired by seed: only seeds
that both methods have count (a seed run for one method only is ignored), and ``n`` is
the number of shared seeds. For every Table 1 column (``Acc_max`` and the mean and
variance of the per-epoch accuracy above each epoch percentile) the per-seed difference
``d = A - B`` gives:

* the mean paired difference ``mean(d)``;
* its 95% confidence interval: by default the **t interval** ``mean(d) ± t(0.975, n-1)
  sd(d) / sqrt(n)`` (the interval of the paired t-test, exact for normal differences
  and right in coverage at small ``n``, where the percentile bootstrap is too narrow:
  with 5 pairs it excludes 0 for cells whose paired t p is above 0.05). The percentile
  bootstrap over the seed pairs (:func:`scipy.stats.bootstrap`,
  :data:`BOOTSTRAP_RESAMPLES` resamples, RNG seed :data:`BOOTSTRAP_SEED`) is kept as
  an option (``interval="bootstrap"``, ``python -m dfkd_jax.report --interval=bootstrap``);
* the two-sided **paired t-test** p-value (:func:`scipy.stats.ttest_rel`);
* its **Holm-adjusted** p-value (:func:`holm`) over the *family* of one report: every
  cell of one ``paired.md``, i.e. every dataset x every pair x every Table 1 column in
  it (:func:`adjust`). This is the p that marks a cell significant (adjusted ``p <``
  :data:`SIGNIFICANCE_LEVEL`): the chance that any null cell of the report comes out
  marked is at most 5%, where uncorrected about one null cell in twenty would. A pair
  of fewer than :data:`FEW_SEEDS` shared seeds is descriptive (its caveat says so) and
  never marked, whatever its p;
* the two-sided Wilcoxon signed-rank p-value (:func:`scipy.stats.wilcoxon`, exact for
  small ``n`` without ties or zero differences), shown alongside, unadjusted. It is not
  the marking test because with ``n`` seeds its smallest possible two-sided exact p is
  ``2 / 2**n``: with ``n < 6`` it can never fall below 0.05 (``n = 5``: 0.0625);
* the **minimum detectable difference** (:func:`minimum_detectable_difference`): the
  true mean difference that a two-sided paired t-test at level 0.05 with these ``n``
  pairs would detect with 80% power, were the differences' standard deviation the
  observed ``sd(d)`` (noncentral t). Shown for the cells not marked significant: a null
  cell says "no difference larger than about this", not "no difference". It is for one
  test at 0.05; under the family's correction the detectable difference is larger.

Degenerate differences: when every ``d`` is 0 both p-values are 1; when every ``d`` is
the same non-zero value the t statistic is infinite and its p is 0 (scipy's result); in
both the t interval is the point ``mean(d)`` and the detectable difference 0.

Default pairs (:data:`DEFAULT_PAIRS`): each meta method vs its joint-update control
(``lra_mb:mb_dfkd``, ``lra_pre:pre_dfkd``, ``lra_ema:ema_dfkd``), Fast DFKD's exact
meta-gradient vs its first-order one (``fast_exact:fast``), then every method with
replay (``lra_mb``, ``lra_pre``, ``lra_ema``, ``mb_dfkd``, ``pre_dfkd``, ``mad``,
``ema_dfkd``, and the data bank's ``fast``, ``fast_reptile``, ``fast_exact``,
``nayer``) vs ``dfkd``. ``python -m dfkd_jax.report --pairs=A:B,C:D`` replaces them.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import optimize
from scipy import stats

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
SIGNIFICANCE_LEVEL = 0.05
#: Power at which :func:`minimum_detectable_difference` is computed.
POWER = 0.8
#: Interval kinds of :func:`paired_difference`: the t interval (default) or the
#: percentile bootstrap.
INTERVALS = ("t", "bootstrap")
#: Fewest shared seeds for which a pair is compared.
MIN_SHARED_SEEDS = 2
#: Pairs with fewer shared seeds get a caveat in ``paired.md``: their interval rests on
#: normality that so few differences cannot check.
FEW_SEEDS = 5
REPLAY_METHODS = ("lra_mb", "lra_pre", "lra_ema", "mb_dfkd", "pre_dfkd", "mad",
                  "ema_dfkd", "fast", "fast_reptile", "fast_exact", "nayer")
DEFAULT_PAIRS = (("lra_mb", "mb_dfkd"), ("lra_pre", "pre_dfkd"), ("lra_ema", "ema_dfkd"),
                 ("fast_exact", "fast"), *((m, "dfkd") for m in REPLAY_METHODS))


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
  """The paired difference ``A - B`` of one column over ``n`` shared seeds.

  Attributes:
    n: shared seeds.
    mean: mean of ``d = A - B``.
    sd: sample standard deviation of ``d`` (``ddof=1``).
    ci_low, ci_high: the 95% interval of ``mean`` (t or bootstrap, ``interval``).
    t_p: two-sided paired t-test p-value.
    wilcoxon_p: two-sided Wilcoxon signed-rank p-value.
    mdd: minimum detectable difference at ``n`` (:func:`minimum_detectable_difference`).
    adjusted_p: ``t_p`` adjusted for the report's family (:func:`adjust`); ``t_p``
      itself for a family of one cell. The marking test.
    interval: ``"t"`` or ``"bootstrap"``.
  """

  n: int
  mean: float
  sd: float
  ci_low: float
  ci_high: float
  t_p: float
  wilcoxon_p: float
  mdd: float
  adjusted_p: float
  interval: str = "t"

  @property
  def significant(self) -> bool:
    """Marked: Holm-adjusted p < 0.05 over at least :data:`FEW_SEEDS` pairs; fewer are
    descriptive (:func:`few_seeds_caveat`) and never marked, whatever their p."""
    return self.n >= FEW_SEEDS and self.adjusted_p < SIGNIFICANCE_LEVEL


def t_interval(d: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
  """``mean(d) ± t((1 + confidence) / 2, n - 1) sd(d) / sqrt(n)``: the paired t
  interval (:meth:`scipy.stats.ttest_rel`'s ``confidence_interval``), also for ``sd = 0``
  (then the point ``mean(d)``)."""
  n, mean, sd = d.size, float(d.mean()), float(d.std(ddof=1))
  half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
  return mean - half, mean + half


def bootstrap_interval(d: np.ndarray,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
  """The percentile bootstrap interval of ``mean(d)`` over the pairs (deterministic)."""
  ci = stats.bootstrap((d,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES,
                       confidence_level=confidence, method="percentile",
                       rng=np.random.default_rng(BOOTSTRAP_SEED)).confidence_interval
  return float(ci.low), float(ci.high)


def minimum_detectable_difference(sd: float, n: int, alpha: float = SIGNIFICANCE_LEVEL,
                                  power: float = POWER) -> float:
  """The smallest true mean difference a paired t-test detects with ``power``.

  The two-sided test at level ``alpha`` rejects when ``|t| > c = t(1 - alpha/2, n-1)``;
  with a true mean difference ``delta`` the statistic follows a noncentral t with
  ``n - 1`` degrees of freedom and noncentrality ``delta sqrt(n) / sd``. The returned
  ``delta`` solves ``P(|T| > c) = power``.

  Args:
    sd: standard deviation of the paired differences (the observed one).
    n: number of pairs (>= 2).
    alpha: two-sided level.
    power: wanted power, in (alpha, 1).

  Returns:
    ``delta >= 0`` in the units of ``sd``; 0 when ``sd`` is 0.
  """
  if n < 2:
    raise ValueError(f"minimum_detectable_difference needs n >= 2 pairs, got {n}")
  if not alpha < power < 1:
    raise ValueError(f"power={power} must be in (alpha={alpha}, 1)")
  if sd == 0:
    return 0.0
  df = n - 1
  critical = stats.t.ppf(1 - alpha / 2, df)

  def shortfall(nc: float) -> float:
    # The lower tail is below alpha/2 and falls with nc; scipy returns NaN for it where
    # it underflows (e.g. df = 1, nc = 8).
    lower = float(np.nan_to_num(stats.nct.cdf(-critical, df, nc), nan=0.0))
    return float(stats.nct.sf(critical, df, nc)) + lower - power

  upper = 1.0
  while shortfall(upper) < 0:
    upper *= 2
  noncentrality = optimize.brentq(shortfall, 0.0, upper, xtol=1e-10)
  return float(noncentrality * sd / math.sqrt(n))


def paired_difference(a: Sequence[float], b: Sequence[float],
                      interval: str = "t") -> Difference:
  """Mean of ``a - b`` with its 95% interval, the paired t / Wilcoxon p-values and the
  minimum detectable difference; ``adjusted_p`` is ``t_p`` (a family of one, see
  :func:`adjust`).

  Args:
    a, b: the two methods' values, aligned by seed (at least 2 each).
    interval: ``"t"`` (:func:`t_interval`) or ``"bootstrap"``
      (:func:`bootstrap_interval`).

  Raises:
    ValueError: lengths differ, fewer than :data:`MIN_SHARED_SEEDS` pairs, or an
      unknown ``interval``.
  """
  if interval not in INTERVALS:
    raise ValueError(f"unknown interval {interval!r}; valid: {', '.join(INTERVALS)}")
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or a.size < MIN_SHARED_SEEDS:
    raise ValueError(f"paired_difference needs two equal-length lists of at least "
                     f"{MIN_SHARED_SEEDS} values, got {a.shape} and {b.shape}")
  d = a - b
  ci_low, ci_high = (t_interval if interval == "t" else bootstrap_interval)(d)
  if np.all(d == 0):
    t_p = wilcoxon_p = 1.0
  else:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)   # Constant d: infinite t.
      t_p = float(stats.ttest_rel(a, b).pvalue)
      wilcoxon_p = float(stats.wilcoxon(d).pvalue)
  sd = float(d.std(ddof=1))
  return Difference(n=int(d.size), mean=float(d.mean()), sd=sd, ci_low=ci_low,
                    ci_high=ci_high, t_p=t_p, wilcoxon_p=wilcoxon_p,
                    mdd=minimum_detectable_difference(sd, int(d.size)),
                    adjusted_p=t_p, interval=interval)


def holm(p_values: Sequence[float]) -> np.ndarray:
  """Holm's step-down adjusted p-values (family-wise error control).

  With the ``m`` p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted
  ``p~_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))``; a cell is rejected at level
  ``alpha`` when ``p~ < alpha``, which keeps the chance of any false rejection in the
  family at most ``alpha`` whatever the dependence between the tests. NaN counts as 1.

  Returns:
    The adjusted p-values in the order given.
  """
  p = np.nan_to_num(np.asarray(p_values, np.float64), nan=1.0)
  m = p.size
  order = np.argsort(p, kind="stable")
  stepped = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
  adjusted = np.empty(m)
  adjusted[order] = stepped
  return adjusted


def column_values(run) -> dict[str, float]:
  """A run's Table 1 columns: ``acc_max``, ``acc_sel`` and ``acc_last`` (runs that
  record a data-free selection), ``mean_above_p<p>``, ``var_above_p<p>``.

  Args:
    run: a :class:`dfkd_jax.study.study_runs.Run` (anything with ``acc_max`` and
      ``learning_evolution``; ``selected_accuracy`` and ``acc_last`` optional).
  """
  out = {"acc_max": run.acc_max}
  if getattr(run, "selected_accuracy", None) is not None:
    out["acc_sel"] = run.selected_accuracy
    out["acc_last"] = run.acc_last
  for p, (mean, var) in run.learning_evolution.items():
    out[f"mean_above_p{p}"] = mean
    out[f"var_above_p{p}"] = var
  return out


TITLES = {"acc_max": "Acc_max", "acc_sel": "Acc_sel", "acc_last": "Acc_last"}


def column_title(column: str) -> str:
  """The Table 1 header of a :func:`column_values` key."""
  if column in TITLES:
    return TITLES[column]
  kind, p = column.split("_above_p")
  return f"{'μ' if kind == 'mean' else 'σ²'}[S_Acc] >{p}th"


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Method ``a`` vs method ``b`` on one dataset: ``{column: Difference}`` (``a - b``)."""

  a: str
  b: str
  seeds: tuple[int, ...]
  differences: dict[str, Difference]


def compare(by_method: Mapping[str, Sequence[Any]], a: str, b: str,
            interval: str = "t") -> Comparison | None:
  """Pairs the runs of ``a`` and ``b`` by seed; ``None`` under 2 shared seeds.

  The differences' ``adjusted_p`` is their own ``t_p``; :func:`adjust` corrects them
  for the report's family.

  Args:
    by_method: ``{method: [runs]}`` of one dataset (runs with ``seed``).
    interval: see :func:`paired_difference`.
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
      c: paired_difference([v[c] for v in values_a], [v[c] for v in values_b], interval)
      for c in columns})


def adjust(comparisons: Sequence[Comparison]) -> list[Comparison]:
  """Holm-adjusts the t p-values of every cell of ``comparisons`` as one family.

  The family is every (comparison, column) cell given: for the report, every dataset x
  pair x Table 1 column of one ``paired.md``.

  Returns:
    The comparisons with ``adjusted_p`` set on each difference (same order).
  """
  cells = [(i, c) for i, comparison in enumerate(comparisons)
           for c in comparison.differences]
  adjusted = holm([comparisons[i].differences[c].t_p for i, c in cells])
  new = [dict(comparison.differences) for comparison in comparisons]
  for (i, c), p in zip(cells, adjusted, strict=True):
    new[i][c] = dataclasses.replace(new[i][c], adjusted_p=float(p))
  return [dataclasses.replace(comparison, differences=differences)
          for comparison, differences in zip(comparisons, new, strict=True)]


def family_size(comparisons: Sequence[Comparison]) -> int:
  """Cells of the family of :func:`adjust`."""
  return sum(len(c.differences) for c in comparisons)


def p_text(p: float) -> str:
  """A p-value as the tables print it (``-`` for NaN)."""
  return "-" if math.isnan(p) else f"{p:.2g}" if p < 1e-3 else f"{p:.3g}"


def _interval_title(interval: str) -> str:
  return f"{CONFIDENCE:.0%} {'t' if interval == 't' else 'bootstrap'} CI"


def few_seeds_caveat(n: int, interval: str = "t") -> str:
  """The warning printed under a pair with fewer than :data:`FEW_SEEDS` shared seeds."""
  kind = ("t interval assumes normal differences" if interval == "t" else
          "percentile bootstrap interval is too narrow")
  return (f"Only n = {n} shared seeds: the {kind}, which {n} values cannot check, and "
          f"Wilcoxon's p cannot go below {2 / 2 ** n:.2g}. Read this pair as "
          "descriptive; run more seeds to test it.")


def markdown(comparison: Comparison) -> str:
  """One pair's table: a row per column; significant rows' differences in bold with *.

  Significance is the adjusted p's (:func:`adjust`); cells not significant show their
  minimum detectable difference.
  """
  n = len(comparison.seeds)
  interval = next(iter(comparison.differences.values())).interval
  lines = [f"### {comparison.a} − {comparison.b} (n = {n} seeds: "
           f"{', '.join(map(str, comparison.seeds))})", ""]
  if n < FEW_SEEDS:
    lines += [f"**Caveat.** {few_seeds_caveat(n, interval)}", ""]
  lines += [f"| Column | Mean difference | {_interval_title(interval)} | paired t p | "
            f"Holm p | Wilcoxon p | MDD ({POWER:.0%} power) |",
            "|---|---|---|---|---|---|---|"]
  for column, d in comparison.differences.items():
    mean = f"{d.mean:+.2f}"
    if d.significant:
      mean = f"**{mean}** *"
    mdd = "-" if d.significant else f"{d.mdd:.2f}"
    lines.append(f"| {column_title(column)} | {mean} | [{d.ci_low:+.2f}, "
                 f"{d.ci_high:+.2f}] | {p_text(d.t_p)} | {p_text(d.adjusted_p)} | "
                 f"{p_text(d.wilcoxon_p)} | {mdd} |")
  return "\n".join(lines) + "\n"


def csv_records(dataset: str, comparison: Comparison) -> list[dict[str, Any]]:
  """One flat record per column of one pair."""
  return [{"dataset": dataset, "method_a": comparison.a, "method_b": comparison.b,
           "column": column, "n": d.n, "seeds": " ".join(map(str, comparison.seeds)),
           "mean_difference": d.mean, "sd_difference": d.sd, "interval": d.interval,
           "ci_low": d.ci_low, "ci_high": d.ci_high, "t_p": d.t_p,
           "holm_p": d.adjusted_p, "wilcoxon_p": d.wilcoxon_p,
           "min_detectable_difference": d.mdd, "significant": int(d.significant)}
          for column, d in comparison.differences.items()]


def description(num_cells: int, interval: str = "t", family: str | None = None) -> str:
  """The paragraph at the top of ``paired.md`` stating the method; ``family``: the
  family of Holm's correction in words when it holds more than the ``num_cells``
  below (the time table's cells, :mod:`dfkd_jax.study.time_report`)."""
  if family is None:
    family = f"all {num_cells} cells below (every dataset × pair × Table 1 column)"
  if interval == "t":
    how = (f"the interval is the {CONFIDENCE:.0%} paired t interval, mean ± "
           "t(0.975, n−1)·sd/√n")
  else:
    how = (f"the interval is a {CONFIDENCE:.0%} percentile bootstrap over the seed pairs "
           f"({BOOTSTRAP_RESAMPLES} resamples, RNG seed {BOOTSTRAP_SEED}; too narrow "
           "for small n: it can exclude 0 where the t-test's p is above 0.05)")
  return (f"Paired by seed: only seeds both methods have count (n). Each cell is the "
          f"mean over seeds of A − B; {how}. The two-sided paired t-test p is adjusted "
          f"by Holm's method over the family of this report: {family}. A difference "
          "is marked "
          f"**bold** * when its Holm-adjusted p < {SIGNIFICANCE_LEVEL} and n >= "
          f"{FEW_SEEDS} (a pair of fewer seeds is descriptive: never marked), so the "
          f"chance that any null cell is marked is at most {SIGNIFICANCE_LEVEL}. MDD is "
          "the minimum detectable difference of a cell not marked: the true difference "
          f"a paired t-test at {SIGNIFICANCE_LEVEL} (two-sided, unadjusted) would detect "
          f"with {POWER:.0%} power at this n, if the differences' standard deviation "
          "were the observed one. The two-sided Wilcoxon signed-rank p (unadjusted) is "
          "shown alongside (with n < 6 seeds its exact p is at least 2/2^n > 0.05, so "
          "it cannot reach significance).")
