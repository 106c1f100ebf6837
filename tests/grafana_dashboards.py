"""The shipped Grafana dashboards as data, and Grafana's substitution of their variables.

The static tests check the JSON models; the integration tests evaluate every panel
query against a real Prometheus. Both need the same two things: the list of panel
targets, and the PromQL that Grafana would send for one, which this module produces
the way Grafana's Prometheus data source does (``interpolate``). The integration tests
also share grafana/prometheus.yml pointed at their ports (``prometheus_config``) and
the panels' queries evaluated there (``PanelQueries``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from servers import Prometheus

GRAFANA = Path(__file__).resolve().parents[1] / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

SCRAPE_INTERVAL_S = 1.0
# Grafana's $__interval for a 1 h range on a ~720 px wide panel: $__rate_interval is
# then 6 s, so a late scrape on a loaded machine still leaves two samples per window.
GRAFANA_INTERVAL_S = 5.0

# $name, ${name} or ${name:format}; $1, $2 are label_replace's groups, not variables.
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|([A-Za-z_]\w*))")
LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$")
_REGEX_SPECIAL = re.compile(r"[$^*{}\[\]'+?.()|]")


@dataclass(frozen=True)
class Target:
    """One query of one panel."""

    dashboard: str  # the file's stem: "training"
    panel: dict[str, Any]
    target: dict[str, Any]

    @property
    def expr(self) -> str:
        return self.target["expr"]

    @property
    def id(self) -> str:
        """A readable test id: dashboard, panel title, refId."""
        return f"{self.dashboard}: {self.panel['title']} [{self.target['refId']}]"


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included; rows themselves too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", ())


def targets() -> list[Target]:
    """Every target of every panel of every shipped dashboard."""
    return [
        Target(path.stem, panel, target)
        for path in DASHBOARDS
        for panel in panels(load(path))
        for target in panel.get("targets", ())
    ]


def variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return dashboard.get("templating", {}).get("list", [])


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def interpolate(expr: str, values: dict[str, str], scrape_interval_s: float, interval_s: float) -> str:
    """``expr`` as Grafana sends it: each variable replaced (KeyError for one not
    defined), ``$__interval`` (the time range over the panel's width in pixels, at
    least the data source's scrape interval) and ``$__rate_interval``, which Grafana
    makes max($__interval + scrape interval, 4 * scrape interval)."""
    interval_s = max(interval_s, scrape_interval_s)
    builtins = {
        "__interval": _duration(interval_s),
        "__rate_interval": _duration(max(interval_s + scrape_interval_s, 4 * scrape_interval_s)),
    }
    known = {**builtins, **values}
    return VARIABLE.sub(lambda m: known[m.group(1) or m.group(2)], expr)


def _regex_escape(value: str) -> str:
    """Grafana's prometheusSpecialRegexEscape: a backslash pair before regex specials,
    since the value lands inside a PromQL string that is itself a regex."""
    return _REGEX_SPECIAL.sub(lambda m: "\\\\" + m.group(0), value.replace("\\", "\\\\\\\\"))


def format_value(variable: dict[str, Any], values: list[str], all_selected: bool) -> str:
    """What Grafana's Prometheus data source puts in a query for ``variable``
    (interpolateQueryExpr): a single-value variable's value as is; a multi-value one's
    values regex-escaped and joined as (a|b); "All" as the variable's allValue if set."""
    if all_selected and variable.get("allValue") is not None:
        return variable["allValue"]
    if not variable.get("multi") and not variable.get("includeAll"):
        return values[0]
    escaped = [_regex_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def resolve_variables(
    dashboard: dict[str, Any], label_values: Callable[[str | None, str], list[str]]
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The query text of every variable, as Grafana would fill it with its default
    selection ("All" for multi-value variables, else the first value), and the
    values each query variable found.

    ``label_values(selector or None, label)`` answers a ``label_values(...)`` query;
    variables are resolved in order, so a variable's query may use the ones before it.
    """
    text: dict[str, str] = {}
    found: dict[str, list[str]] = {}
    for variable in variables(dashboard):
        if variable["type"] != "query":
            continue  # the data source variable only picks where queries go
        match = LABEL_VALUES.match(variable["query"].strip())
        if match is None:
            raise ValueError(f"variable {variable['name']}: only label_values(...) queries are supported here")
        selector, label = match.groups()
        if selector is not None:
            selector = VARIABLE.sub(lambda m: text[m.group(1) or m.group(2)], selector)
        found[variable["name"]] = values = sorted(label_values(selector, label))
        if values:
            text[variable["name"]] = format_value(variable, values, all_selected=bool(variable.get("multi")))
    return text, found


def prometheus_config(
    scrape_targets: list[str], *, pushgateway: str | None = None, alertmanager: str | None = None
) -> dict[str, Any]:
    """grafana/prometheus.yml pointed at this test's ports: its scrape jobs (the
    file_sd example's hosts do not exist here), its rules and alerting, 1 s scrapes."""
    shipped = yaml.safe_load((GRAFANA / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in shipped["scrape_configs"]}
    interval = f"{SCRAPE_INTERVAL_S:g}s"
    config = {
        "global": {**shipped["global"], "scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(GRAFANA / path) for path in shipped["rule_files"]],
        "scrape_configs": [{**jobs["perfwatch"], "static_configs": [{"targets": scrape_targets}]}],
    }
    if pushgateway:
        config["scrape_configs"].append(
            {**jobs["perfwatch-pushgateway"], "static_configs": [{"targets": [pushgateway]}]})
    if alertmanager:
        (shipped_alertmanager,) = shipped["alerting"]["alertmanagers"]
        config["alerting"] = {"alertmanagers": [{**shipped_alertmanager,
                                                 "static_configs": [{"targets": [alertmanager]}]}]}
    return config


@dataclass
class PanelQueries:
    """The dashboards' queries as Grafana would send them to ``prometheus``, evaluated at Unix time ``at``."""

    prometheus: Prometheus
    at: float
    _variables: dict[str, tuple[dict[str, str], dict[str, list[str]]]] = field(default_factory=dict)

    def label_values(self, selector: str | None, label: str) -> list[str]:
        """What Grafana's label_values(selector, label) lists, over the minute before ``at``."""
        params = {"start": f"{self.at - 60:.3f}", "end": f"{self.at:.3f}"}
        if selector:
            params["match[]"] = selector
        return self.prometheus.api(f"label/{label}/values", **params)

    def variables(self, dashboard: str) -> tuple[dict[str, str], dict[str, list[str]]]:
        """The dashboard's variables as Grafana fills them by default, and the values found."""
        if dashboard not in self._variables:
            self._variables[dashboard] = resolve_variables(
                load(GRAFANA / "dashboards" / f"{dashboard}.json"), self.label_values)
        return self._variables[dashboard]

    def failure(self, target: Target) -> str | None:
        """Why the panel would show nothing: no series, or none with a finite value; None if it shows data."""
        text, _ = self.variables(target.dashboard)
        expr = interpolate(target.expr, text, SCRAPE_INTERVAL_S, GRAFANA_INTERVAL_S)
        result = self.prometheus.query(expr, at=self.at)
        if not result:
            return f"{target.id}: no data for {expr}"
        if not any(math.isfinite(float(series["value"][1])) for series in result):
            return f"{target.id}: only NaN or Inf for {expr}: {result}"
        return None
