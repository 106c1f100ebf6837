"""The shipped Grafana dashboards as data, and Grafana's substitution of their variables.

The static tests check the JSON models; the integration tests evaluate every panel
query against a real Prometheus. Both need the same two things: the list of panel
targets, and the PromQL that Grafana would send for one, which this module produces
the way Grafana's Prometheus data source does (``interpolate``). The integration tests
also share grafana/prometheus.yml pointed at their ports (``prometheus_config``) and
the panels' queries evaluated there (``PanelQueries``).

The Benchmark history dashboard queries PostgreSQL instead (``SQL_DASHBOARDS``); its SQL is
filled in as Grafana's PostgreSQL data source does it (``interpolate_sql``): the variables in the
browser (``format_sql``), then the time macros on Grafana's server (``expand_macros``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from servers import Prometheus

GRAFANA = Path(__file__).resolve().parents[1] / "grafana"
ALL_DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
POSTGRES = "grafana-postgresql-datasource"  # the plugin id since Grafana 10.3 (before: "postgres")

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


def datasource_type(path: Path) -> str:
    """The plugin id the dashboard's ``datasource`` variable offers: where all its queries go."""
    (datasource,) = [v for v in load(path)["templating"]["list"] if v["type"] == "datasource"]
    return datasource["query"]


DASHBOARDS = [path for path in ALL_DASHBOARDS if datasource_type(path) == "prometheus"]
SQL_DASHBOARDS = [path for path in ALL_DASHBOARDS if datasource_type(path) == POSTGRES]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included; rows themselves too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", ())


def targets() -> list[Target]:
    """Every target of every panel of every shipped Prometheus dashboard."""
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


# ---------------------------------------------------------------- SQL dashboards (PostgreSQL)

# Grafana's server-side macro syntax (pkg/tsdb/grafana-postgresql-datasource/macros.go): the arguments
# run to the first ")", so a macro's argument cannot hold parentheses.
SQL_MACRO = re.compile(r"\$(\w+)\(([^)]*)\)")
# What the browser replaces: $name, ${name} or ${name:format}; $__name is left to the server.
SQL_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::(\w+))?\}|(\w+))")


@dataclass(frozen=True)
class SqlQuery:
    """One SQL text of a dashboard: a panel's target, an annotation's, or a variable's."""

    dashboard: str
    where: str  # "panel 'Title' [A]", "annotation 'Name'", "variable machine"
    sql: str
    format: str  # "time_series" or "table"

    @property
    def id(self) -> str:
        return f"{self.dashboard}: {self.where}"


def sql_queries(path: Path) -> list[SqlQuery]:
    """Every SQL text of the dashboard at ``path``, in the order Grafana runs them (variables first)."""
    dashboard = load(path)
    found = [SqlQuery(path.stem, f"variable {v['name']}", v["query"], "table")
             for v in variables(dashboard) if v["type"] == "query"]
    found += [SqlQuery(path.stem, f"annotation {a['name']!r}", a["target"]["rawSql"], a["target"]["format"])
              for a in dashboard["annotations"]["list"] if "target" in a]
    found += [SqlQuery(path.stem, f"panel {panel['title']!r} [{t['refId']}]", t["rawSql"], t["format"])
              for panel in panels(dashboard) for t in panel.get("targets", ())]
    return found


def _quote(value: str, mark: str, escaped: str) -> str:
    return mark + value.replace(mark, escaped) + mark


def format_sql(variable: dict[str, Any], values: list[str], form: str | None = None) -> str:
    """What Grafana puts in a SQL query for ``variable`` holding ``values``: without a format, its SQL
    data sources' interpolateVariable (a multi-value or All-able variable's values as quoted literals
    joined by commas, for ``IN ($var)``; a single-value one's value with its quotes doubled, for
    ``'$var'``); with one, Grafana's formatter of that name (``${var:sqlstring}``, ``:singlequote``,
    ``:doublequote``, which escape with a backslash, ``:csv``, ``:raw``)."""
    if form is None:
        if variable.get("multi") or variable.get("includeAll"):
            return ",".join(_quote(v, "'", "''") for v in values)
        return values[0].replace("'", "''")
    formats = {"sqlstring": lambda v: _quote(v, "'", "''"), "singlequote": lambda v: _quote(v, "'", "\\'"),
               "doublequote": lambda v: _quote(v, '"', '\\"'), "csv": str, "raw": str}
    return ",".join(formats[form](v) for v in values)


def rfc3339(moment: datetime) -> str:
    """Go's time.RFC3339Nano of ``moment`` in UTC, as Grafana's macros write it: no trailing zeros."""
    moment = moment.astimezone(timezone.utc)
    fraction = f".{moment.microsecond:06d}".rstrip("0") if moment.microsecond else ""
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


def expand_macros(sql: str, start: datetime, end: datetime) -> str:
    """The time macros as Grafana's server expands them for PostgreSQL; KeyError for another macro."""
    def macro(match: re.Match) -> str:
        name, args = match.group(1), [a.strip() for a in match.group(2).split(",")]
        return {"__timeFilter": lambda: f"{args[0]} BETWEEN '{rfc3339(start)}' AND '{rfc3339(end)}'",
                "__timeFrom": lambda: f"'{rfc3339(start)}'", "__timeTo": lambda: f"'{rfc3339(end)}'"}[name]()
    return SQL_MACRO.sub(macro, sql)


def interpolate_sql(sql: str, chosen: dict[str, tuple[dict[str, Any], list[str]]], start: datetime,
                    end: datetime) -> str:
    """``sql`` as PostgreSQL gets it from Grafana: ``chosen`` (name -> the variable and its selected
    values) substituted, then the macros over the time range ``start``..``end``. A ``$name`` that is no
    variable and no ``$__`` built-in is a KeyError: Grafana would send it as it is."""
    def variable(match: re.Match) -> str:
        name = match.group(1) or match.group(3)
        if name.startswith("__"):
            return match.group(0)
        definition, values = chosen[name]
        return format_sql(definition, values, match.group(2))
    return expand_macros(SQL_VARIABLE.sub(variable, sql), start, end)


def custom_options(variable: dict[str, Any]) -> list[tuple[str, str]]:
    """(text, value) of a custom variable's ``query``, "a, b" or "text : value, ...", as Grafana splits it."""
    options = []
    for item in re.split(r"(?<!\\),", variable["query"]):
        text, _, value = item.partition(" : ")
        options.append((text.strip(), (value or text).strip()))
    return options


def resolve_sql_variables(
    dashboard: dict[str, Any], run: Callable[[str], tuple[list[str], list[tuple]]], start: datetime, end: datetime
) -> tuple[dict[str, tuple[dict[str, Any], list[str]]], dict[str, list[tuple[str, str]]]]:
    """Each variable with the values Grafana selects by default (All for a multi-value one, else the
    first option, or a custom one's ``current``), and the (text, value) options each found.

    ``run(sql)`` executes a query and returns its column names and rows; as in Grafana, a query variable
    takes its values from a ``__value`` column and its texts from ``__text``, else from the first column.
    Variables are resolved in order, so a query may use the variables before it.
    """
    chosen: dict[str, tuple[dict[str, Any], list[str]]] = {}
    found: dict[str, list[tuple[str, str]]] = {}
    for variable in variables(dashboard):
        if variable["type"] == "custom":
            found[variable["name"]] = custom_options(variable)
            chosen[variable["name"]] = (variable, [variable["current"]["value"]])
        elif variable["type"] == "query":
            columns, rows = run(interpolate_sql(variable["query"], chosen, start, end))
            value = columns.index("__value") if "__value" in columns else 0
            text = columns.index("__text") if "__text" in columns else value
            options = found[variable["name"]] = [(str(row[text]), str(row[value])) for row in rows]
            values = [v for _, v in options]
            chosen[variable["name"]] = (variable, values if variable.get("includeAll") else values[:1])
    return chosen, found


def with_every_option(chosen: dict[str, tuple[dict[str, Any], list[str]]], found: dict[str, list[tuple[str, str]]],
                      name: str) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """``chosen`` (resolve_sql_variables's) with every option ``found`` for variable ``name`` selected, as a user
    who ticks them all."""
    return {**chosen, name: (chosen[name][0], [value for _, value in found[name]])}
