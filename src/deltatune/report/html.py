"""Render the report pages with jinja2 (templates in ``deltatune/report/templates``, autoescape on).

Every value from a run folder is escaped by the templates; the only markup passed in are the
SVG figures of :mod:`deltatune.report.plots`. The pages are self-contained: inline CSS, inline
SVG, no script, no external URL.

- :func:`run_view`: the data of one run's sections (header, curves, verdict, tables).
- :func:`render`: a template with its context -> the HTML text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from deltatune.report import plots
from deltatune.report.checked import clean_text
from deltatune.report.overfitting import Diagnosis, diagnose_data
from deltatune.report.reading import RunData
from deltatune.report.sections import (
    AnalysisSection,
    Header,
    SplitSection,
    analysis_section,
    compressed_section,
    header,
    split_sections,
)
from deltatune.version import __version__

TEMPLATES = Path(__file__).parent / "templates"
_ENV = None


def _env():
    """The jinja2 environment (made once): the package's templates, autoescape on, undefined names are errors."""
    global _ENV
    if _ENV is None:
        import jinja2

        _ENV = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=jinja2.StrictUndefined,
            trim_blocks=False, lstrip_blocks=False,
        )
    return _ENV


def markup(svg: str):
    """An SVG string from :mod:`deltatune.report.plots` as trusted markup (``""`` stays empty)."""
    from markupsafe import Markup

    return Markup(svg) if svg else ""


@dataclass
class RunView:
    """What the run templates show of one run (see ``macros.html.j2``'s ``run_body``)."""

    anchor: str
    header: Header
    metric: str
    best_step: Optional[int]
    curves: Any  # Markup or ""
    curves_caption: str
    verdict: Optional[Diagnosis]
    gap: Any
    splits: list[SplitSection]
    compressed: Optional[tuple[list[tuple[str, str]], SplitSection]]
    analysis: AnalysisSection
    notes: list[str]


def verdict(run: RunData) -> Optional[Diagnosis]:
    """The overfitting verdict of ``run`` (:func:`deltatune.report.overfitting.diagnose_data`); ``None``
    without any training record. Restored: eval.json's best step differs from its last step."""
    return diagnose_data(run)


def run_view(run: RunData, anchor: str = "run") -> RunView:
    """Everything one run's section shows (figures drawn here; about 0.1-0.2 s each)."""
    best = run.best_step
    diag = verdict(run)
    svg, caption = plots.curves_figure(run.records, run.metric, best)
    return RunView(
        anchor=anchor,
        header=header(run),
        metric=run.metric,
        best_step=best,
        curves=markup(svg),
        curves_caption=caption,
        verdict=diag,
        gap=markup(plots.gap_svg(diag.evaluations)) if diag else "",
        splits=split_sections(run),
        compressed=compressed_section(run),
        analysis=analysis_section(run),
        notes=list(run.notes),
    )


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` with ``context`` (plus ``version`` and ``generated``, the time now).

    Raises:
        jinja2.TemplateError: a template bug (never caused by a run's content, which is only escaped).
    """
    context.setdefault("version", __version__)
    context.setdefault("generated", time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    return clean_text(_env().get_template(template).render(**context))  # no lone surrogate (a folder name) reaches the write
