"""grafana/ without servers: the dashboards' JSON models, provisioning, prometheus.yml and
the alert rules, checked for structure and by promtool (config, rules, rule unit tests).

What the queries return against real data is tests/test_prometheus_integration.py's job, and
tests/test_grafana_sql.py's for the SQL of the Benchmark history dashboard.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from grafana_dashboards import (
    ALL_DASHBOARDS,
    DASHBOARDS,
    GRAFANA,
    POSTGRES,
    SQL_DASHBOARDS,
    SQL_MACRO,
    SQL_VARIABLE,
    VARIABLE,
    format_value,
    interpolate,
    load,
    panels,
    sql_queries,
    targets,
    variables,
)
from servers import binary

REPO = GRAFANA.parent
PROMETHEUS_YML = GRAFANA / "prometheus.yml"
RULES = GRAFANA / "rules" / "perfwatch.rules.yml"
RULE_TESTS = GRAFANA / "rules" / "perfwatch.rules.test.yml"
DATASOURCE_UID = "perfwatch-prometheus"
PROMETHEUS_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
POSTGRES_UID = "perfwatch-postgres"
POSTGRES_DATASOURCE = {"type": POSTGRES, "uid": "${datasource}"}
SQL_MACROS = {"__timeFilter", "__timeFrom", "__timeTo"}  # those tests/grafana_dashboards.py expands as Grafana does
GRAFANA_BUILTINS = {"__rate_interval", "__interval"}
METRIC = re.compile(r"\b(perfwatch_\w+)")

ALL_TARGETS = targets()


def yaml_file(path: Path):
    return yaml.safe_load(path.read_text())


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], check=False, capture_output=True, text=True, timeout=60)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"promtool failed:\n{result.stdout}\n{result.stderr}"


def test_the_training_host_benchmarks_and_history_dashboards_are_shipped():
    assert {path.stem for path in DASHBOARDS} == {"training", "host", "benchmarks"}
    assert {path.stem for path in SQL_DASHBOARDS} == {"history"}
    assert ALL_DASHBOARDS == sorted(DASHBOARDS + SQL_DASHBOARDS), "a dashboard on another data source"


@pytest.mark.parametrize("path", ALL_DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_a_grafana_json_model(path):
    dashboard = load(path)
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == f"perfwatch-{path.stem}" and dashboard["title"].startswith("perfwatch / ")
    assert "perfwatch" in dashboard["tags"]
    assert dashboard["id"] is None, "an exported id would clash with the importing Grafana's own"
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_queries_prometheus_through_the_datasource_variable(path):
    """A panel without a target shows nothing; a hard-coded data source uid breaks on import."""
    dashboard = load(path)
    (datasource,) = [v for v in variables(dashboard) if v["type"] == "datasource"]
    assert (datasource["name"], datasource["query"]) == ("datasource", "prometheus")
    assert datasource["current"]["value"] == DATASOURCE_UID, "defaults to the provisioned data source"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            assert not panel.get("targets"), panel["title"]
            continue
        assert panel["datasource"] == PROMETHEUS_DATASOURCE, panel["title"]
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == PROMETHEUS_DATASOURCE and target["expr"].strip(), panel["title"]
    for variable in variables(dashboard):
        if variable["type"] == "query":
            assert variable["datasource"] == PROMETHEUS_DATASOURCE, variable["name"]
            # Grafana's editor parses a string; an object {qryType: 1, query} lacks the
            # label and metric fields it reads, and saves back "label_values(undefined)".
            assert isinstance(variable["query"], str) and variable["query"] == variable["definition"]


@pytest.mark.parametrize("path", SQL_DASHBOARDS, ids=lambda p: p.stem)
def test_every_sql_panel_annotation_and_variable_queries_postgresql_through_the_datasource_variable(path):
    """As for Prometheus: a hard-coded uid breaks on import. The SQL is code (rawSql), not the builder's."""
    dashboard = load(path)
    (datasource,) = [v for v in variables(dashboard) if v["type"] == "datasource"]
    assert (datasource["name"], datasource["query"], datasource["current"]["value"]) == (
        "datasource", POSTGRES, POSTGRES_UID)
    annotations = [a for a in dashboard["annotations"]["list"] if not a.get("builtIn")]
    queried = [panel for panel in panels(dashboard) if panel["type"] != "row"] + annotations
    assert annotations and queried
    for item in queried:
        assert item["datasource"] == POSTGRES_DATASOURCE, item.get("title", item.get("name"))
        for target in item.get("targets", [item.get("target")]):
            assert target["datasource"] == POSTGRES_DATASOURCE and target["rawSql"].strip(), item.get("title")
            assert (target["editorMode"], target["rawQuery"]) == ("code", True)
            assert target["format"] in ("time_series", "table")
    for variable in variables(dashboard):
        if variable["type"] == "query":
            assert variable["datasource"] == POSTGRES_DATASOURCE and variable["query"] == variable["definition"]


@pytest.mark.parametrize("query", [q for path in SQL_DASHBOARDS for q in sql_queries(path)], ids=lambda q: q.id)
def test_sql_uses_defined_variables_quoted_for_postgresql_and_the_time_macros(query):
    """Grafana's server takes a macro's arguments up to the first ")", so a macro over cast(...) breaks;
    :singlequote and :doublequote escape with a backslash, which PostgreSQL does not read as one, so a
    benchmark named with a quote (a string parameter) would break them: IN ($var) and '$var' double it."""
    defined = {v["name"] for v in variables(load(GRAFANA / "dashboards" / f"{query.dashboard}.json"))}
    used = {m.group(1) or m.group(3) for m in SQL_VARIABLE.finditer(query.sql)}
    macros = {m.group(1) for m in SQL_MACRO.finditer(query.sql)}
    assert {name for name in used if not name.startswith("__")} <= defined - {"datasource"}
    assert macros <= SQL_MACROS and {name for name in used if name.startswith("__")} == macros
    assert all("(" not in m.group(2) for m in SQL_MACRO.finditer(query.sql))
    assert {m.group(2) for m in SQL_VARIABLE.finditer(query.sql)} <= {None, "sqlstring", "csv", "raw"}


def test_the_benchmarks_dashboard_keeps_the_latest_run_and_links_to_the_sql_history():
    benchmarks, history = load(GRAFANA / "dashboards" / "benchmarks.json"), load(GRAFANA / "dashboards" / "history.json")
    assert [p["title"] for p in benchmarks["panels"] if p["type"] == "row"] == ["Latest run"]
    assert any(link.get("url", "").startswith(f"/d/{history['uid']}/") for link in benchmarks["links"])


@pytest.mark.parametrize("target", ALL_TARGETS, ids=lambda t: t.id)
def test_query_uses_rate_interval_and_defined_variables(target):
    """Fixed rate windows break when the scrape interval changes; an undefined
    variable reaches Prometheus as a literal '$name'."""
    defined = {v["name"] for v in variables(load(GRAFANA / "dashboards" / f"{target.dashboard}.json"))}
    used = {m.group(1) or m.group(2) for m in VARIABLE.finditer(target.expr)}
    assert used <= defined | GRAFANA_BUILTINS, f"undefined variables {used - defined - GRAFANA_BUILTINS}"
    ranges = re.findall(r"(?<=[\w})])\[([^\]]*)\]", target.expr)  # after a selector or a subquery's ")"
    assert set(ranges) <= {"$__rate_interval"}


def test_gpu_panels_say_so_in_title_and_description():
    """The integration test skips GPU panels on a machine without one; a reader must
    see which they are, and no panel may hide a GPU query among host queries."""
    gpu_titles = set()
    for target in ALL_TARGETS:
        title, uses_gpu = target.panel["title"], "perfwatch_gpu_" in target.expr
        assert uses_gpu == title.startswith("GPU "), f"{title!r}: GPU queries iff a 'GPU ' title"
        if uses_gpu:
            assert "Needs an NVIDIA GPU" in target.panel["description"], title
            gpu_titles.add(title)
    assert gpu_titles, "the training dashboard charts the GPU"


def test_panel_and_variable_queries_are_valid_promql(tmp_path):
    """promtool parses each query, with variables filled as Grafana would, as a recording rule."""
    rules = []
    for path in DASHBOARDS:
        dashboard = load(path)
        query_variables = [v for v in variables(dashboard) if v["type"] == "query"]
        values = {v["name"]: format_value(v, ["a.b:9400", "c"], all_selected=bool(v.get("multi")))
                  for v in query_variables}
        queries = []
        for variable in query_variables:
            selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"])
            assert selector, f"{variable['name']}: label_values(metric{{...}}, label) expected"
            queries.append(selector.group(1))
        queries += [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", ())]
        rules += [{"record": f"{path.stem}:query{i}", "expr": interpolate(q, values, 5, 5)}
                  for i, q in enumerate(queries)]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    assert_ok(promtool("check", "rules", str(path)))


def test_every_metric_charted_or_alerted_on_is_documented():
    """docs/metrics.md is the exporter's contract; a name outside it is a typo or a
    metric nobody promised."""
    doc = (REPO / "docs" / "metrics.md").read_text()
    texts = [target.expr for target in ALL_TARGETS] + [RULES.read_text()]
    texts += [v["query"] for path in DASHBOARDS for v in variables(load(path)) if v["type"] == "query"]
    names = {re.sub(r"_(bucket|sum|count)$", "", name) for text in texts for name in METRIC.findall(text)}
    undocumented = sorted(name for name in names if not re.search(rf"\b{name}\b", doc))
    assert not undocumented, f"not in docs/metrics.md: {undocumented}"


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards():
    (datasource,) = yaml_file(GRAFANA / "provisioning" / "datasources" / "perfwatch.yml")["datasources"]
    assert (datasource["type"], datasource["uid"]) == ("prometheus", DATASOURCE_UID)
    scrape_interval = yaml_file(PROMETHEUS_YML)["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape_interval, "$__rate_interval is built on it"
    (provider,) = yaml_file(GRAFANA / "provisioning" / "dashboards" / "perfwatch.yml")["providers"]
    assert (provider["type"], provider["folder"]) == ("file", "perfwatch")
    assert provider["options"]["path"]


def test_postgresql_provisioning_takes_its_connection_from_the_environment():
    """No host, user or password is shipped; the password is stored encrypted (secureJsonData)."""
    (datasource,) = yaml_file(GRAFANA / "provisioning" / "datasources" / "perfwatch-postgres.yml")["datasources"]
    assert (datasource["type"], datasource["uid"]) == (POSTGRES, POSTGRES_UID)
    placeholders = {"url": datasource["url"], "user": datasource["user"],
                    "database": datasource["jsonData"]["database"], "sslmode": datasource["jsonData"]["sslmode"],
                    "password": datasource["secureJsonData"]["password"]}
    assert all(re.fullmatch(r"\$\{PERFWATCH_GRAFANA_PG_[A-Z]+\}", value) for value in placeholders.values()), placeholders
    assert "password" not in datasource and "password" not in datasource["jsonData"]


def test_prometheus_config_is_valid():
    """promtool also loads the rule files and the file_sd target files it names."""
    assert_ok(promtool("check", "config", str(PROMETHEUS_YML)))
    config = yaml_file(PROMETHEUS_YML)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["perfwatch"]["static_configs"] == [{"targets": ["127.0.0.1:9400", "127.0.0.1:9401"]}]
    assert jobs["perfwatch-nodes"]["file_sd_configs"] == [{"files": ["targets/*.json"]}]
    assert (GRAFANA / "targets" / "example.json").exists()
    assert jobs["perfwatch-pushgateway"]["honor_labels"] is True, "pushed job/instance/rank must survive"
    assert all(name.startswith("perfwatch") for name in jobs), "the exporter alerts select job=~'perfwatch.*'"


def test_alert_rules_are_valid_and_say_what_is_wrong():
    assert_ok(promtool("check", "rules", str(RULES)))
    alerts = [rule for group in yaml_file(RULES)["groups"] for rule in group["rules"] if "alert" in rule]
    assert {a["alert"] for a in alerts} >= {
        "PerfwatchInputBound", "PerfwatchGpuUnderutilized", "PerfwatchThroughputDropped", "PerfwatchExporterDown",
    }
    for alert in alerts:
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["alert"]
        assert {"summary", "description"} <= alert["annotations"].keys(), alert["alert"]


def test_alert_rule_unit_tests_pass():
    assert_ok(promtool("test", "rules", str(RULE_TESTS)))


def test_every_alert_has_unit_tests_that_fire_it_and_keep_it_quiet():
    alerts = {rule["alert"] for group in yaml_file(RULES)["groups"] for rule in group["rules"] if "alert" in rule}
    cases = [case for test in yaml_file(RULE_TESTS)["tests"] for case in test.get("alert_rule_test", ())]
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert alerts - fired == set(), "alerts never shown to fire"
    assert alerts - quiet == set(), "alerts never shown to stay quiet"
