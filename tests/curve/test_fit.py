"""The inverse power law fit recovers a known curve and predicts a held-out size."""

import pytest

from deltatune.curve.fit import fit_curve


def test_fit_recovers_a_known_power_law_and_predicts_the_last_point():
    law = lambda n: 0.92 - 3.0 * n ** -0.6  # noqa: E731
    sizes = [100, 250, 500, 1000, 2000]
    points = [(n, law(n) + noise) for n in sizes for noise in (-1e-4, 1e-4)]
    fit = fit_curve([n for n, _ in points], [v for _, v in points], maximize=True)
    assert fit.ok and fit.law.a == pytest.approx(0.92, abs=2e-3) and fit.law.c == pytest.approx(0.6, abs=0.03)
    assert fit.law.b == pytest.approx(3.0, rel=0.1)
    assert fit.predicted_at_largest == pytest.approx(law(2000), abs=2e-3)  # fitted on 100..1000 only
    assert fit.change_from_doubling == pytest.approx(law(4000) - law(2000), abs=1e-3) and fit.change_from_doubling > 0
    d = fit.as_dict()
    assert d["form"] == "a - b * n^(-c)" and "Hestness" in d["references"][1]


def test_a_loss_like_metric_is_fitted_as_a_falling_error():
    law = lambda n: 0.3 + 5.0 * n ** -0.7  # noqa: E731
    sizes = [50, 100, 200, 400]
    fit = fit_curve(sizes, [law(n) for n in sizes], maximize=False)
    assert fit.ok and fit.law.a == pytest.approx(0.3, abs=1e-3) and fit.change_from_doubling < 0
    assert fit.predicted_at_largest == pytest.approx(law(400), abs=1e-3)


def test_fewer_than_three_sizes_is_no_fit_and_says_so():
    fit = fit_curve([10, 10, 20], [0.5, 0.52, 0.6], maximize=True)
    assert not fit.ok and "2 distinct training size(s)" in fit.reason and fit.measured_at_largest == 0.6
    three = fit_curve([10, 20, 40], [0.5, 0.6, 0.65], maximize=True)
    assert three.ok and three.predicted_at_largest is None and "use 4 or more fractions" in three.check_reason


def test_the_asymptote_stays_within_the_metric_range():
    # accuracies still climbing almost linearly: unbounded, the fit put the asymptote near 110
    sizes, values = [64, 128, 192, 320], [0.52, 0.58, 0.63, 0.70]
    fit = fit_curve(sizes, values, maximize=True)
    assert fit.ok and fit.law.a <= 1.0 and fit.predicted_at_double <= 1.0
    losses = fit_curve([64, 128, 256, 512], [0.9, 0.5, 0.3, 0.2], maximize=False)
    assert losses.ok and losses.law.a >= 0.0
