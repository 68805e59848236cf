"""What a PromQL expression (as Grafana dashboards and alert rules write them) asks of the
metrics: the metric names it selects and the labels it matches, groups, joins or shows.

Not a PromQL parser: enough of the grammar to find every metric name and label name in the
expressions we ship, so a test can hold them against a real /metrics exposition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tests.harness.metrics import _LABEL, _SAMPLE

FUNCTIONS = {
    "abs", "absent", "avg", "avg_over_time", "bottomk", "ceil", "changes", "clamp_max",
    "clamp_min", "count", "count_over_time", "delta", "deriv", "floor", "group",
    "histogram_quantile", "idelta", "increase", "irate", "label_join", "label_replace",
    "last_over_time", "max", "max_over_time", "min", "min_over_time", "quantile",
    "quantile_over_time", "rate", "resets", "round", "scalar", "sort", "sort_desc", "sqrt",
    "stddev", "sum", "sum_over_time", "time", "timestamp", "topk", "vector", "label_values",
    "query_result", "label_names", "metrics",
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}
# Series Prometheus itself makes for every scrape target.
PROMETHEUS_OWN = {"up": {"job", "instance"}, "scrape_duration_seconds": {"job", "instance"}}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_LABEL_REPLACE = re.compile(r'label_replace\s*\(.*?,\s*"([^"]*)"\s*,\s*"[^"]*"\s*,\s*"([^"]*)"',
                            re.DOTALL)
_LABEL_VALUES = re.compile(r"label_values\s*\(\s*(?:([a-zA-Z_:][\w:]*)\s*(?:\{[^}]*\})?\s*,)?"
                           r"\s*(\w+)\s*\)")
_IDENTIFIER = re.compile(r"(?<![\w$.\[])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_LEGEND = re.compile(r"\{\{\s*([a-zA-Z_]\w*)\s*\}\}")


@dataclass
class Uses:
    """Metric names selected, and labels per metric (None: the expression at large)."""

    metrics: set[str] = field(default_factory=set)
    matched: dict[str, set[str]] = field(default_factory=dict)  # metric -> labels matched
    grouped: set[str] = field(default_factory=set)  # by/on/…, legend, label_replace source
    made: set[str] = field(default_factory=set)  # labels created by label_replace


def uses(expr: str, legend: str = "") -> Uses:
    found = Uses()
    for made, source in _LABEL_REPLACE.findall(expr):
        found.made.add(made)
        found.grouped.add(source)
    for metric, label in _LABEL_VALUES.findall(expr):
        if metric:
            found.metrics.add(metric)
            found.matched.setdefault(metric, set()).add(label)
        else:
            found.grouped.add(label)
    for metric, matchers in _SELECTOR.findall(expr):
        labels = set(_MATCHER.findall(matchers))
        if metric:
            found.metrics.add(metric)
            found.matched.setdefault(metric, set()).update(labels)
        else:
            found.grouped.update(labels)
    for _, labels in _GROUPING.findall(expr):
        found.grouped.update(label.strip() for label in labels.split(",") if label.strip())
    found.grouped.update(_LEGEND.findall(legend))
    bare = _LABEL_VALUES.sub(lambda m: f" {m[1] or ''} ", expr)
    bare = _GROUPING.sub(" ", _SELECTOR.sub(lambda m: f" {m[1] or ''} ", _STRING.sub('""', bare)))
    bare = re.sub(r"\[[^\]]*\]", " ", bare)  # range durations: [5m], [$__rate_interval]
    for name in _IDENTIFIER.findall(bare):
        if name.lower() not in KEYWORDS and name not in FUNCTIONS and not name.isdigit():
            found.metrics.add(name)
    return found


def exposed(*texts: str) -> dict[str, set[str]]:
    """Metric name -> label names, from Prometheus text expositions (what /metrics says)."""
    labels: dict[str, set[str]] = {}
    for text in texts:
        for line in text.splitlines():
            match = _SAMPLE.match(line)
            if match:
                names = {name for name, _ in _LABEL.findall(match["labels"] or "")}
                labels.setdefault(match["name"], set()).update(names)
    return labels


def problems(expr: str, metrics: dict[str, set[str]], legend: str = "",
             target_labels: frozenset[str] = frozenset({"job", "instance"})) -> list[str]:
    """Why `expr` would find nothing in these metrics: unknown metric names, labels a metric
    does not have, grouping or legend labels none of its metrics have. Prometheus adds
    `job` and `instance` to every scraped series."""
    known = {**PROMETHEUS_OWN, **{name: names | target_labels for name, names in
                                  metrics.items()}}
    found = uses(expr, legend)
    wrong = [f"metric {name} is not exported" for name in sorted(found.metrics - set(known))]
    for name, labels in sorted(found.matched.items()):
        for label in sorted(labels - known.get(name, labels)):
            wrong.append(f"{name} has no label {label!r}")
    available = set().union(*(known.get(name, set()) for name in found.metrics)) | found.made
    for label in sorted(found.grouped - available):
        wrong.append(f"label {label!r} is on none of {sorted(found.metrics)}")
    return wrong
