import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_squared_error

from deltatune.metrics.regression import regression_metrics, target_metrics

TRUE = np.array([0.0, 1.0, 2.5, 3.0, 4.2, 5.0])
PRED = np.array([0.3, 0.8, 2.0, 3.5, 4.0, 4.1])


def test_one_target_matches_scipy_and_sklearn():
    m = regression_metrics(TRUE, PRED, ["score"])
    assert m["mse"] == pytest.approx(mean_squared_error(TRUE, PRED))
    assert m["mae"] == pytest.approx(mean_absolute_error(TRUE, PRED))
    assert m["rmse"] == pytest.approx(np.sqrt(mean_squared_error(TRUE, PRED)))
    assert m["pearson"] == pytest.approx(stats.pearsonr(PRED, TRUE)[0])
    assert m["spearman"] == pytest.approx(stats.spearmanr(PRED, TRUE)[0])
    assert "per_target" not in m


def test_ties_get_average_ranks_as_scipy():
    true, pred = np.array([1.0, 2.0, 2.0, 3.0, 5.0]), np.array([1.0, 1.0, 2.0, 4.0, 3.0])
    assert target_metrics(true, pred)["spearman"] == pytest.approx(stats.spearmanr(pred, true)[0])


def test_several_targets_are_averaged_and_listed_by_name():
    true = np.stack([TRUE, TRUE[::-1]], axis=1)
    pred = np.stack([PRED, PRED[::-1] * 0.5], axis=1)
    m = regression_metrics(true, pred, ["a", "b"])
    assert set(m["per_target"]) == {"a", "b"}
    assert m["per_target"]["b"]["mse"] == pytest.approx(mean_squared_error(true[:, 1], pred[:, 1]))
    for key in ("mse", "mae", "rmse", "pearson", "spearman"):
        assert m[key] == pytest.approx((m["per_target"]["a"][key] + m["per_target"]["b"][key]) / 2)


def test_constant_predictions_give_zero_correlation_not_nan():
    m = target_metrics(TRUE, np.full_like(TRUE, 2.0))
    assert m["pearson"] == 0.0 and m["spearman"] == 0.0 and np.isfinite(m["mse"])
    assert target_metrics(np.array([1.0]), np.array([2.0]))["pearson"] == 0.0  # one row


def test_shapes_that_do_not_fit_the_names_are_refused():
    with pytest.raises(ValueError, match="target name"):
        regression_metrics(TRUE, PRED, ["a", "b"])
