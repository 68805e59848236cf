"""SVG charts drawn by pygal on the server: no JavaScript in the page or in the SVG."""

from __future__ import annotations

import re

import pygal
from pygal.style import Style

from txrelay.web.data import OUTCOMES, Timeline

LABELS = {
    "delivered": "Delivered",
    "deferred": "Deferred",
    "bounced": "Bounced",
    "in_flight": "In flight",
    "complained": "Complained",
    "arrived": "Arrived",
}
# Colour-blind-safe (Okabe-Ito), with the outcome's name in the legend and the table too.
_STYLE = Style(
    background="transparent",
    plot_background="transparent",
    colors=("#009E73", "#E69F00", "#D55E00", "#56B4E9"),
    font_family="system-ui, sans-serif",
    label_font_size=11,
    major_label_font_size=11,
    legend_font_size=12,
)
_LABEL_FORMAT = {"15m": "%m-%d %H:%M", "1h": "%m-%d %H:%M", "1d": "%Y-%m-%d"}


def outcomes_svg(chart: Timeline, title: str) -> str:
    """A stacked bar per bucket: delivered, deferred, bounced, in flight (together: arrived)."""
    bars = pygal.StackedBar(
        style=_STYLE,
        js=(),  # pygal's tooltips script: none, the table below carries the figures
        disable_xml_declaration=True,
        width=900,
        height=360,
        explicit_size=False,
        title=title,
        legend_at_bottom=True,
        x_label_rotation=30,
        show_minor_x_labels=False,
        truncate_label=-1,
        print_values=False,
        include_x_axis=True,
        min_scale=2,
    )
    labels = [bucket.start.strftime(_LABEL_FORMAT[chart.width]) for bucket in chart.buckets]
    bars.x_labels = labels
    bars.x_labels_major = labels[:: max(1, len(labels) // 12)]
    for outcome in OUTCOMES:
        bars.add(LABELS[outcome], [bucket.counts[outcome] for bucket in chart.buckets])
    return without_scripts(bars.render(is_unicode=True))


def burn_svg(chart: Timeline, title: str) -> str:
    """A bar per day: the recipients that arrived (each one a unit of quota)."""
    bars = pygal.Bar(
        style=_STYLE,
        js=(),
        disable_xml_declaration=True,
        width=900,
        height=260,
        explicit_size=False,
        title=title,
        show_legend=False,
        x_label_rotation=30,
        show_minor_x_labels=False,
        truncate_label=-1,
        min_scale=2,
    )
    labels = [bucket.start.strftime("%m-%d") for bucket in chart.buckets]
    bars.x_labels = labels
    bars.x_labels_major = labels[:: max(1, len(labels) // 10)]
    bars.add(LABELS["arrived"], [bucket.counts["arrived"] for bucket in chart.buckets])
    return without_scripts(bars.render(is_unicode=True))


_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.DOTALL | re.IGNORECASE)


def without_scripts(svg: str) -> str:
    """pygal always embeds its configuration as a script: the dashboard serves none (its
    Content-Security-Policy forbids scripts anyway)."""
    return _SCRIPT.sub("", svg)
