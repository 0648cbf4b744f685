"""Tests for dfkd_jax.run.evaluation and dfkd_jax.metrics.curves (LRA Sec. 4.1 / Table 1 metrics)."""

import fractions
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfkd_jax.metrics import curves
from dfkd_jax.run import evaluation

# ---------------------------------------------------------------------------
# count_correct
# ---------------------------------------------------------------------------

_count_correct = jax.jit(evaluation.count_correct)


@pytest.mark.parametrize(
    "logits, labels, mask, expected",
    [
        ([[2., 1., 0.], [0., 3., 1.], [1., 0., 5.]], [0, 1, 2], None, 3),
        ([[2., 1., 0.], [0., 3., 1.], [1., 0., 5.]], [1, 1, 0], None, 1),
        ([[2., 1., 0.], [0., 3., 1.], [1., 0., 5.]], [0, 1, 2], [1, 1, 0], 2),
        ([[2., 1., 0.], [0., 3., 1.], [1., 0., 5.]], [0, 1, 2], [0, 0, 0], 0),
        # Padding rows (zero logits, label 0) would be "correct" without the mask.
        ([[0., 0.], [0., 0.], [1., 2.]], [0, 0, 1], [False, False, True], 1),
        ([[0., 0.], [0., 0.], [1., 2.]], [0, 0, 1], None, 3),
    ])
def test_count_correct(logits, labels, mask, expected):
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels, jnp.int32)
  if mask is not None:
    mask = jnp.asarray(mask)
  got = _count_correct(logits, labels, mask)
  assert got.dtype == jnp.int32 and got.shape == ()
  assert int(got) == expected


def test_count_correct_leading_device_axis():
  """[devices, batch, C] logits, as a sharded eval batch laid out per device."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=(2, 6))
  mask = rng.random((2, 6)) > 0.3
  expected = int(np.sum((logits.argmax(-1) == labels) & mask))
  assert int(_count_correct(logits, labels, mask)) == expected


def test_count_correct_rejects_mismatched_shapes():
  with pytest.raises(AssertionError):
    evaluation.count_correct(jnp.zeros((3, 2)), jnp.zeros((4,), jnp.int32))
  with pytest.raises(AssertionError):
    evaluation.count_correct(jnp.zeros((3, 2)), jnp.zeros((3,), jnp.int32),
                             jnp.ones((2,), bool))


# ---------------------------------------------------------------------------
# learning_evolution
# ---------------------------------------------------------------------------


def _consecutive(k: int, last: float) -> tuple[float, float]:
  """Mean and population variance of k consecutive integers ending at `last`."""
  return last - (k - 1) / 2, (k * k - 1) / 12


@pytest.mark.parametrize(
    "acc, expected",
    [
        # E = 10, acc_e = e: epochs above n-th pct are e > n / 10, i.e. n/10+1 .. 10.
        (list(range(1, 11)),
         {"0": (5.5, 8.25), "20": (6.5, 5.25), "40": (7.5, 35 / 12),
          "60": (8.5, 1.25), "80": (9.5, 0.25)}),
        # E = 5, hand-computed.
        ([50., 60., 55., 70., 65.],
         {"0": (60., 50.), "20": (62.5, 31.25), "40": (190 / 3, 350 / 9),
          "60": (67.5, 6.25), "80": (65., 0.)}),
        # Short runs.
        ([42.],
         {"0": (42., 0.), "20": (42., 0.), "40": (42., 0.), "60": (42., 0.),
          "80": (42., 0.)}),
        ([1., 3.],
         {"0": (2., 1.), "20": (2., 1.), "40": (2., 1.), "60": (3., 0.),
          "80": (3., 0.)}),
        ([10., 20., 30.],
         {"0": (20., 200 / 3), "20": (20., 200 / 3), "40": (25., 25.),
          "60": (25., 25.), "80": (30., 0.)}),
        # E = 200 (the paper's CIFAR setting scale): 80th pct = epochs 161..200.
        (list(range(1, 201)),
         {"0": _consecutive(200, 200), "20": _consecutive(160, 200),
          "40": _consecutive(120, 200), "60": _consecutive(80, 200),
          "80": _consecutive(40, 200)}),
    ])
def test_learning_evolution_hand_computed(acc, expected):
  got = curves.learning_evolution(acc)
  assert list(got) == ["0", "20", "40", "60", "80"]
  for key, (mean, var) in expected.items():
    assert set(got[key]) == {"mean", "var"}
    assert got[key]["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-12)
    assert got[key]["var"] == pytest.approx(var, rel=1e-12, abs=1e-12)
    assert isinstance(got[key]["mean"], float) and isinstance(got[key]["var"], float)


def test_learning_evolution_custom_percentiles_and_order():
  got = curves.learning_evolution(list(range(1, 11)), percentiles=(99, 50, 90))
  assert list(got) == ["99", "50", "90"]
  assert got["50"] == {"mean": 8.0, "var": 2.0}    # epochs 6..10
  assert got["90"] == {"mean": 10.0, "var": 0.0}   # epoch 10
  assert got["99"] == {"mean": 10.0, "var": 0.0}   # 9.9 -> epoch 10


@pytest.mark.parametrize("num_epochs", [1, 2, 3, 4, 7, 13, 99, 100, 101, 250, 400])
@pytest.mark.parametrize("n", [0, 1, 20, 33, 40, 50, 60, 80, 99])
def test_percentile_start_matches_definition(num_epochs, n):
  """Epochs counted are exactly the 1-based e with e > n * E / 100 (exact)."""
  threshold = fractions.Fraction(n * num_epochs, 100)
  expected = [e for e in range(1, num_epochs + 1) if e > threshold]
  start = curves.percentile_start(num_epochs, n)
  assert list(range(start + 1, num_epochs + 1)) == expected
  assert expected  # never empty for n < 100


def test_learning_evolution_matches_numpy_on_random_curve():
  rng = np.random.default_rng(1)
  acc = rng.uniform(10, 95, size=37)
  got = curves.learning_evolution(acc)
  for n in (0, 20, 40, 60, 80):
    tail = acc[n * 37 // 100:]
    assert got[str(n)]["mean"] == pytest.approx(np.mean(tail))
    assert got[str(n)]["var"] == pytest.approx(np.var(tail, ddof=0))


@pytest.mark.parametrize(
    "acc, percentiles, error",
    [
        ([], (0,), ValueError),
        ([1., float("nan")], (0,), ValueError),
        ([1., float("inf")], (0,), ValueError),
        ([[1., 2.]], (0,), ValueError),
        ([1., 2.], (100,), ValueError),
        ([1., 2.], (-1,), ValueError),
        ([1., 2.], (20.0,), TypeError),
        ([1., 2.], (True,), TypeError),
    ])
def test_learning_evolution_rejects_bad_input(acc, percentiles, error):
  with pytest.raises(error):
    curves.learning_evolution(acc, percentiles)


# ---------------------------------------------------------------------------
# cumulative mean, acc_max, summarize
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "acc, expected",
    [
        ([], []),
        ([7.], [7.]),
        ([10., 20., 30., 40.], [10., 15., 20., 25.]),
        ([50., 60., 55., 70., 65.], [50., 55., 55., 58.75, 60.]),
    ])
def test_cumulative_mean_accuracy(acc, expected):
  got = curves.cumulative_mean_accuracy(acc)
  assert isinstance(got, list) and all(isinstance(v, float) for v in got)
  np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("acc, expected", [([3.], 3.), ([1., 9., 4.], 9.),
                                           ([50., 60., 55., 70., 65.], 70.)])
def test_acc_max(acc, expected):
  got = curves.acc_max(acc)
  assert isinstance(got, float) and got == expected


def test_acc_max_rejects_empty():
  with pytest.raises(ValueError):
    curves.acc_max([])


@pytest.mark.parametrize("as_array", [list, np.asarray,
                                      lambda a: np.asarray(a, np.float32),
                                      jnp.asarray])
def test_summarize_fields_and_json(as_array):
  acc = [50., 60., 55., 70., 65.]
  summary = curves.summarize(as_array(acc))
  assert set(summary) == {"test_accuracy", "acc_max", "learning_evolution",
                          "cumulative_mean_accuracy"}
  assert summary["test_accuracy"] == acc
  assert summary["acc_max"] == 70.
  assert summary["learning_evolution"] == curves.learning_evolution(acc)
  assert summary["cumulative_mean_accuracy"] == pytest.approx(
      [50., 55., 55., 58.75, 60.])
  # Strict JSON (no NaN) round trip with plain Python types.
  assert json.loads(json.dumps(summary, allow_nan=False)) == summary


def test_summarize_single_epoch():
  summary = curves.summarize([12.5])
  assert summary["acc_max"] == 12.5
  assert summary["cumulative_mean_accuracy"] == [12.5]
  assert all(v == {"mean": 12.5, "var": 0.0}
             for v in summary["learning_evolution"].values())
  json.dumps(summary, allow_nan=False)


def test_summarize_rejects_empty():
  with pytest.raises(ValueError):
    curves.summarize([])
