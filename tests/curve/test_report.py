"""curve.html and the table from curve.json's content, with a fitted curve (no training)."""

from deltatune.curve.fit import fit_curve
from deltatune.curve.report import format_table, render_html, summarize


def _data():
    law = lambda n: 0.9 - 2.0 * n ** -0.5  # noqa: E731
    points = [{"fraction": f, "seed": s, "train_rows": n, "value": law(n) + 0.002 * s, "path": f"c/frac-{f:.3f}-seed-{s}"}
              for f, n in ((0.1, 100), (0.25, 250), (0.5, 500), (1.0, 1000)) for s in ((0, 1) if f < 1 else (0,))]
    fit = fit_curve([p["train_rows"] for p in points], [p["value"] for p in points], True)
    return {"task": "text-classification", "metric": "accuracy", "direction": "maximize", "validation_rows": 100,
            "config": {"model.name_or_path": "m<x>"}, "points": points, "fit": fit.as_dict()}


def test_table_and_page_show_points_fit_check_and_doubling():
    data = _data()
    rows = summarize(data["points"])
    assert [r["runs"] for r in rows] == [2, 2, 2, 1] and abs(rows[0]["std"] - 0.002 / 2**0.5) < 1e-9
    text = format_table(data)
    assert "fit: metric(n) = " in text and "check: fitted on the smaller fractions only" in text and "2x data (2,000 rows)" in text
    page = render_html(data)
    assert page.count("<svg") == 1 and "m&lt;x&gt;" in page and "training rows (log scale)" in page
    assert "<script" not in page
    assert "caution" not in text  # the law fits: its check is closer than the gain it predicts


def test_a_check_that_misses_by_more_than_the_predicted_gain_is_flagged():
    data = _data()
    fit = fit_curve([100, 200, 300, 1000], [0.50, 0.60, 0.62, 0.58], True)  # the largest size falls back
    data["fit"] = fit.as_dict()
    text = format_table(data)
    assert "caution: the check misses by" in text
