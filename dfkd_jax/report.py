r"""Tables and figures of DFKD runs from their ``summary.json`` files (LRA Table 1, Fig. 4).

  python -m dfkd_jax.report runs/mnist --out docs/results/mnist [--pairs=lra_mb:mb_dfkd]
      [--interval=t|bootstrap] [--time_budgets=15,30,60 [--cpu_cores=N]
      [--time_clock=cpu|wall] [--host=METHOD=HOST ...]]

reads every ``summary.json`` under the given run directories (a directory holding one
is a run; any other directory is searched recursively, symbolic links followed;
``LABEL=DIR`` names the runs
under ``DIR`` ``LABEL`` instead of their method, e.g. an ablation
``lra_mb_first_order=runs/ablations/first_order`` with ``--pairs=lra_mb_first_order:lra_mb``)
and writes to ``--out``:

* ``table1.md`` / ``table1.csv``: LRA Table 1's layout, one row per method: the mean
  ``mu[S_Acc]`` and variance ``sigma^2[S_Acc]`` of the test accuracy over the epochs
  above the 0/20/40/60/80th epoch percentile (:mod:`dfkd_jax.run.evaluation`) and
  ``Acc_max``. The "Runs (seeds)" column gives the number of runs and their seeds
  (``1 (seed 0)``, ``8 (seeds 0-7)``). When several runs (seeds) share a method, each
  cell is the mean ± the sample standard deviation (``ddof=1``) of the runs' values; a
  single run shows its value alone.
* ``paired.md`` / ``paired.csv`` (:mod:`dfkd_jax.study.paired_stats`), written only when at
  least one pair of methods shares >= 2 seeds on a dataset: for each pair ``A:B``
  (``--pairs=A:B,C:D``; default :data:`dfkd_jax.study.paired_stats.DEFAULT_PAIRS`: each meta
  method vs its joint-update control and every replay method vs ``dfkd``) the mean over
  the shared seeds of ``A - B`` of every Table 1 column, its 95% t interval
  (``--interval=bootstrap``: percentile bootstrap), the paired t-test p, its
  Holm-adjusted p over every cell of the report (the p that marks a cell significant at
  < 0.05), the Wilcoxon signed-rank p and, for cells not marked, the minimum detectable
  difference at 80% power. Seeds only one of the two methods has are ignored; the table
  states n and the seeds, and warns when n < 5.
* PNG figures in the style of LRA Fig. 4: ``<dataset>_test_accuracy.png`` (test accuracy
  per epoch) and ``<dataset>_cumulative_mean_accuracy.png`` (its running mean): per
  method a thin line per run (seed) and a thick line with markers for the mean over
  seeds (so a one-epoch run shows as a dot), the teacher's test accuracy as a dashed
  black line, integer epoch ticks; and
  ``<dataset>_alignment.png``, the per-epoch cosine between the acquisition and retention
  gradients (Section 3.4) of the methods that log it.
* Runs that record a data-free selection (:mod:`dfkd_jax.metrics.selection`): ``Acc_sel`` and
  ``Acc_last`` beside ``Acc_max`` in Table 1 (and in ``paired.md`` as paired columns),
  and per method and criterion its regret ``Acc_max - Acc_sel`` and its Spearman rank
  correlation with the test accuracy over the epochs, averaged over runs
  (:mod:`dfkd_jax.study.selection_report`; ``selection.csv``). Runs flagged collapsed
  (``summary.json``'s ``collapsed``, :func:`dfkd_jax.metrics.selection.collapse`) are counted
  under their dataset's table and marked with the reason in its run list, and the
  command warns of them on stderr.

* With ``--time_budgets=15,30,60`` (core-minutes per seed: a run's cost is
  ``train_cpu_seconds / num_seeds`` core-seconds per seed, process CPU seconds, where
  its ``summary.json`` records them, else ``train_seconds * cpu_cores / num_seeds``,
  wall seconds x cores; ``--time_clock=wall`` charges every run by wall x cores),
  ``time_to_accuracy.md`` / ``time_to_accuracy.json``: per method the test accuracy of
  the last epoch completed within each budget (mean ± sd over the seeds that reached
  it, n; a budget before the first epoch or past a run's end is not reached, never
  extrapolated), Acc_max, the kept epoch and its accuracy, core-seconds per iteration
  per seed and the clock that charged its runs; per pair the paired verdicts at each budget, whose cells join
  ``paired.md``'s Holm family (both files say so); and
  ``<dataset>_time_to_accuracy.png``: accuracy against core-minutes per seed and
  against iterations, a step line per seed, the mean over seeds where all have a value
  and a min-max band (:mod:`dfkd_jax.study.time_to_accuracy`). Runs charged by wall x
  cores without ``train_seconds`` or ``cpu_cores`` are listed and left out
  (``--cpu_cores=N`` gives runs without ``cpu_cores`` N cores).
  Two methods are compared by time only when all their runs were timed on one host
  (summary.json's ``host``: the CPU model or device kind; ``--host=METHOD=HOST`` gives
  it to a method's runs made before it was recorded): a core-second of one machine is
  not one of another. A pair timed on different hosts gets no time cells, and the
  table names the hosts.

Loading and grouping the runs: :mod:`dfkd_jax.study.study_runs`; the figures:
:mod:`dfkd_jax.study.figures`. Runs of different datasets get separate tables and figures. A
run with fewer epochs than its ``config.num_epochs`` (stopped early, killed, still
running) is unfinished: a warning line, and its own row ``METHOD (unfinished)`` outside
every statistic of the finished runs. Curves of finished runs of one method with
different lengths (different ``num_epochs``) are averaged over the epochs they all have;
the table states every run's epoch count.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from dfkd_jax.study import paired_stats
from dfkd_jax.study import report
from dfkd_jax.study import time_to_accuracy


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m dfkd_jax.report",
      description="Table 1 (Markdown, CSV) and Figure 4-style PNGs from summary.json "
                  "files of DFKD runs.")
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR",
                      help="run directories (or folders of them) holding summary.json; "
                           "LABEL=WORKDIR names its runs LABEL instead of their method "
                           "(an ablation's own row, pairable with --pairs)")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument(
      "--pairs", default=None, metavar="A:B,C:D",
      help="method pairs for paired.md (difference A - B over shared seeds); default: "
           + ",".join(f"{a}:{b}" for a, b in paired_stats.DEFAULT_PAIRS))
  parser.add_argument(
      "--interval", default="t", choices=paired_stats.INTERVALS,
      help="95%% interval of the paired differences: the paired t interval (default) "
           "or the percentile bootstrap (too narrow for few seeds)")
  parser.add_argument(
      "--time_budgets", default=None, metavar="MINUTES,...",
      help="core-minutes per seed (see --time_clock) at which "
           "time_to_accuracy.md/.json give each method's test accuracy (last epoch "
           "within the budget) and the pairs' paired verdicts, with a figure per "
           "dataset; e.g. 15,30,60")
  parser.add_argument(
      "--cpu_cores", default=None, type=int, metavar="N",
      help="with --time_budgets: the CPU cores of runs whose summary.json does not "
           "record cpu_cores (made before it was); without it they are left out")
  parser.add_argument(
      "--time_clock", default=None, metavar="cpu|wall",
      help="with --time_budgets: what a seed's cost counts; cpu (default): "
           "train_cpu_seconds / num_seeds, process CPU seconds, where summary.json "
           "records them, else wall; wall: train_seconds x cpu_cores / num_seeds")
  parser.add_argument(
      "--host", action="append", default=[], metavar="METHOD=HOST",
      help="with --time_budgets: the host (CPU model or device kind) of METHOD's runs "
           "whose summary.json does not record it; repeat per method. Methods are "
           "compared by time only on one host")
  args = parser.parse_args(argv)
  try:
    pairs = None if args.pairs is None else paired_stats.parse_pairs(args.pairs)
    budgets = (None if args.time_budgets is None else
               time_to_accuracy.parse_budgets(args.time_budgets))
    hosts = time_to_accuracy.parse_hosts(args.host)
    result = report.write_report(args.workdirs, args.out, pairs, args.interval,
                                 time_budgets=budgets, cpu_cores=args.cpu_cores,
                                 time_clock=args.time_clock, hosts=hosts)
  except (OSError, ValueError) as e:  # OSError: a missing run, permissions, a full disk.
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"{len(result['runs'])} runs -> " + ", ".join(str(p) for p in result["files"]))
  if result["collapsed"]:
    print(f"warning: {len(result['collapsed'])} run(s) flagged collapsed (marked in "
          f"{report.TABLE_MARKDOWN}): {', '.join(result['collapsed'])}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
