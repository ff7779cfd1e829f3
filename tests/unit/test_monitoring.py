"""monitoring/, checked without running Prometheus or Grafana: Prometheus's own checker (promtool, built by
scripts/promtool.sh) accepts the scrape config and every PromQL expression of the dashboard; the dashboard queries
only the series the bridge exposes (EXPECTED_SERIES, the contract with bridge/ops/metrics.py), with their labels,
and shows each of them; on exactly those series every query returns data (promtool's rule unit tests); every panel
uses the provisioned datasource; every file that provisioning names is there.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus" / "prometheus.yml"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = MONITORING / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "tfs-bridge.json"
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMTOOL = ROOT / "scripts" / "promtool.sh"


STAGES = ("fetch", "preprocess", "predict", "commit")
DEAD_LETTER_STAGES = ("parse", "fetch", "preprocess", "predict", "output")
ANY = ()  # a label whose values are not fixed by the contract


def histogram(name: str, **labels: tuple[str, ...]) -> dict[str, dict[str, tuple[str, ...]]]:
    return {f"{name}_bucket": {**labels, "le": ANY}, f"{name}_sum": labels, f"{name}_count": labels}


# Every series a bridge exposes on /metrics, by its exact name on the wire (counters with _total, histograms as
# _bucket/_sum/_count, the Info metric with _info), with its labels and, where the contract fixes them, their
# values; and the process_* series of prometheus_client's ProcessCollector that the dashboard shows. The
# dashboard may query these and nothing else, with these labels and the target labels Prometheus adds.
EXPECTED_SERIES: dict[str, dict[str, tuple[str, ...]]] = {
    # counters
    "tfs_bridge_records_consumed_total": {},
    "tfs_bridge_results_total": {},
    "tfs_bridge_dead_letters_total": {"stage": DEAD_LETTER_STAGES, "type": ANY},
    "tfs_bridge_transactions_total": {"outcome": ("committed", "aborted", "abandoned")},
    "tfs_bridge_predict_retries_total": {"code": ANY},  # gRPC code names
    "tfs_bridge_rebalances_total": {"kind": ("assigned", "revoked", "lost")},
    # histograms
    **histogram("tfs_bridge_end_to_end_seconds"),
    **histogram("tfs_bridge_stage_seconds", stage=STAGES),
    **histogram("tfs_bridge_predict_batch_size_images"),
    # gauges
    "tfs_bridge_predict_batches_in_flight": {},
    "tfs_bridge_window_records": {},
    "tfs_bridge_input_paused": {"reason": ("model_unusable", "window_full")},  # 0 or 1
    "kafka_consumergroup_lag": {"consumergroup": ANY, "topic": ANY, "partition": ANY},  # kafka_exporter's
    # info
    "tfs_bridge_model_info": {"model_name": ANY, "model_version": ANY, "signature_name": ANY},  # always 1
    # ProcessCollector
    "process_cpu_seconds_total": {},
    "process_resident_memory_bytes": {},
}
TARGET_LABELS = ("job", "instance")  # added by Prometheus to every series it scrapes
# Series the dashboard need not show: a histogram's _sum and _count next to its quantiles.
NOT_SHOWN = {f"tfs_bridge_{name}_seconds_{suffix}" for name in ("end_to_end", "stage") for suffix in ("sum", "count")}
# What Grafana substitutes in an expression before Prometheus sees it, with a value promtool accepts.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


# --- promtool ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def promtool() -> Path:
    """promtool, built by scripts/promtool.sh on first use (scripts/setup.sh builds it ahead). No skip: a machine
    that cannot build it fails here, saying why."""
    result = subprocess.run(["bash", str(PROMTOOL), "--path"], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"scripts/promtool.sh could not build promtool:\n{result.stderr}"
    path = Path(result.stdout.strip())
    assert path.is_file(), path
    return path


def run_promtool(promtool: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_promtool_accepts_the_prometheus_config(promtool):
    result = run_promtool(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_rejects_a_broken_config(promtool, tmp_path):
    """The check above can fail: a misspelled key, a bad service-discovery type."""
    text = PROMETHEUS_CONFIG.read_text()
    for old, new in (("metrics_path: /metrics", "metric_path: /metrics"), ("type: A", "type: AAA")):
        assert old in text
        broken = tmp_path / "prometheus.yml"
        broken.write_text(text.replace(old, new, 1))
        result = run_promtool(promtool, "check", "config", str(broken))
        assert result.returncode != 0, (old, new)


def test_promtool_is_the_version_of_the_prometheus_image():
    """scripts/promtool.sh builds the Go module v0.3MM.P, which is Prometheus v3.MM.P: the image compose runs."""
    version = re.search(r"^VERSION=\$\{PROMTOOL_VERSION:-(v0\.3(\d\d)\.(\d+))\}$", PROMTOOL.read_text(),
                        re.MULTILINE)
    assert version, "scripts/promtool.sh: VERSION=${PROMTOOL_VERSION:-v0.3MM.P} not found"
    image = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["prometheus"]["image"]
    image = re.sub(r"\$\{PROMETHEUS_IMAGE:-([^}]+)\}", r"\1", image)  # the variable's default
    assert image == f"prom/prometheus:v3.{int(version.group(2))}.{version.group(3)}"


def test_every_dashboard_expression_is_valid_promql(promtool, tmp_path):
    """Each expression as Grafana sends it (its variables filled in), parsed by Prometheus's own parser: promtool
    checks each recording rule's expression."""
    rules = [{"record": f"dashboard:expression_{i}", "expr": expr}
             for i, expr in enumerate(promql(expr) for _, expr in dashboard_expressions())]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_would_reject_a_broken_expression(promtool, tmp_path):
    path = tmp_path / "broken-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "r", "expr": "histogram_quantile(0.5, sum by (le) (rate(tfs_bridge_end_to_end_seconds_bucket)))"},
    ]}]}))
    result = run_promtool(promtool, "check", "rules", str(path))
    assert result.returncode != 0  # rate of an instant vector: no [range]


# --- the Prometheus config ---------------------------------------------------------------------------------

def scrape_jobs() -> dict[str, dict]:
    return {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}


def test_prometheus_scrapes_every_bridge_replica_and_tf_serving():
    jobs = scrape_jobs()
    assert set(jobs) == {"bridge", "tfserving"}
    bridge = jobs["bridge"]
    # One A record per replica from Compose's DNS: `--scale bridge=3` gives three targets.
    assert bridge.get("metrics_path", "/metrics") == "/metrics"
    assert bridge["dns_sd_configs"] == [{"names": ["bridge"], "type": "A", "port": 9464, "refresh_interval": "10s"}]
    assert "static_configs" not in bridge  # a fixed target would be one replica only
    tfserving = jobs["tfserving"]
    assert tfserving["metrics_path"] == "/monitoring/prometheus/metrics"
    assert tfserving["static_configs"] == [{"targets": ["tfserving:8501"]}]


# --- the dashboard -----------------------------------------------------------------------------------------

def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]) -> list[dict]:
    """Every panel, including those inside collapsed rows."""
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(all_panels(panel.get("panels", [])))
    return found


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard."""
    return [(title, expr) for title, expr, _ in dashboard_queries()]


def promql(expr: str) -> str:
    """An expression as Grafana sends it to Prometheus: its variables substituted."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


# PromQL's words that are not metric names where they stand without a parenthesis after them.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
             "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions or aggregations (followed by a
    parenthesis), not keywords, not label names (inside {...} or by/without/on/ignoring/group_*(...)), not in a
    string, a range, an offset or a number. Selecting by {__name__=...} is not understood, and refused."""
    assert "__name__" not in expr, expr
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries
    expr = re.sub(r"\boffset\s+-?(?:\d+(?:ms|[smhdwy]))+", " ", expr)  # offset 5m, offset 1h30m
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    expr = re.sub(r"(?<![\w:])(?:0x[0-9a-fA-F]+|\d[\d.]*(?:[eE][+-]?\d+)?)", " ", expr)  # numbers
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end():].lstrip().startswith("(") or match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


@pytest.mark.parametrize("expr, names", [
    ('histogram_quantile(0.95, sum by (le, stage) (rate(a_bucket{stage="fetch", job=~"b.*"}[5m])))', {"a_bucket"}),
    ("sum(rate(a_total[1m])) / on (instance) group_left (x) sum by (instance) (b)", {"a_total", "b"}),
    ("count(max by (instance) (c) == 1) or vector(0)", {"c"}),
    ('d{le="+Inf"} > bool 1e3 and e offset 5m unless f offset -1h30m', {"d", "e", "f"}),
    ("max_over_time(g[5m:1m]) + inf - 0x1F", {"g"}),
    ("label_replace(h, \"dst\", \"$1\", \"src\", \"(.*)\")", {"h"}),
])
def test_metric_names_finds_the_selected_metrics_only(expr, names):
    assert metric_names(expr) == names


def test_the_dashboard_queries_only_series_the_bridge_exposes():
    unknown = {(title, name) for title, expr in dashboard_expressions() for name in metric_names(expr)
               if name not in EXPECTED_SERIES}
    assert not unknown, sorted(unknown)


def test_the_dashboard_shows_every_series_the_bridge_exposes():
    used = {name for _, expr in dashboard_expressions() for name in metric_names(expr)}
    assert set(EXPECTED_SERIES) - NOT_SHOWN - used == set()


def selectors(expr: str) -> list[tuple[str, str, str, str]]:
    """(metric, label, operator, value) of each label matcher of a selector with a metric name."""
    found = []
    for metric, matchers in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}", expr):
        for label, operator, value in re.findall(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', matchers):
            found.append((metric, label, operator, value))
    return found


def grouping_labels(expr: str) -> set[str]:
    """The labels of by/without/on/ignoring/group_left/group_right clauses."""
    lists = re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr)
    return {label.strip() for labels in lists for label in labels.split(",") if label.strip()}


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, PromQL, legend format) of every query of the dashboard."""
    return [(panel["title"], target["expr"], target.get("legendFormat", ""))
            for panel in all_panels(dashboard()["panels"]) for target in panel.get("targets", [])]


def test_the_dashboard_uses_only_labels_its_series_have_with_values_they_take():
    for title, expr, legend in dashboard_queries():
        names = metric_names(expr)
        labels = {label for name in names for label in EXPECTED_SERIES[name]} | set(TARGET_LABELS)
        assert grouping_labels(expr) <= labels, (title, expr)
        assert set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)) <= labels, (title, legend)
        for metric, label, operator, value in selectors(expr):
            assert label in (*EXPECTED_SERIES[metric], *TARGET_LABELS), (title, metric, label)
            values = EXPECTED_SERIES[metric].get(label, ANY)
            if operator == "=" and values:
                assert value in values, (title, metric, label, value)
            if label == "job":
                assert value in scrape_jobs(), (title, value)


def synthetic_series() -> list[dict[str, str]]:
    """promtool input: every series of the contract from one replica, with every fixed label value, counters
    rising, histograms with three buckets, gauges (input paused too) at a constant non-zero value."""
    target = {"job": "bridge", "instance": "bridge-1:9464"}
    series = []
    for name, labels in EXPECTED_SERIES.items():
        fixed = {label: values for label, values in labels.items() if values}
        free = {label: "x" for label, values in labels.items() if not values and label != "le"}
        for combination in itertools.product(*fixed.values()):
            base = {**target, **free, **dict(zip(fixed, combination, strict=True))}
            if "le" in labels:
                samples = [({**base, "le": le}, f"0+{i}x40") for i, le in enumerate(("0.1", "1", "+Inf"), 1)]
            elif name.endswith(("_total", "_sum", "_count")):
                samples = [(base, "0+3x40")]
            else:
                samples = [(base, "1x40")]
            for series_labels, values in samples:
                matchers = ",".join(f'{label}="{value}"' for label, value in sorted(series_labels.items()))
                series.append({"series": f"{name}{{{matchers}}}", "values": values})
    return series


def run_non_empty_rule_tests(promtool: Path, tmp_path: Path,
                             queries: list[tuple[str, str]]) -> subprocess.CompletedProcess:
    """Runs promtool's rule unit tests: an alert absent(<expr>) per query, which must not fire on the contract's
    series, i.e. every query returns data when the bridge exposes exactly what the contract says."""
    rules = [{"alert": f"Empty{i}", "expr": f"absent({promql(expr)})", "annotations": {"panel": title}}
             for i, (title, expr) in enumerate(queries)]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "15s", "tests": [{
        "interval": "15s", "input_series": synthetic_series(),
        "alert_rule_test": [{"eval_time": "5m", "alertname": rule["alert"], "exp_alerts": []} for rule in rules],
    }]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    return subprocess.run([str(promtool), "test", "rules", "tests.yml"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)


def test_every_dashboard_query_returns_data_from_the_contract_series(promtool, tmp_path):
    queries = [(title, expr) for title, expr, _ in dashboard_queries()]
    result = run_non_empty_rule_tests(promtool, tmp_path, queries)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("expr", [
    "sum(rate(tfs_bridge_result_total[$__rate_interval]))",  # a misspelled metric
    'histogram_quantile(0.5, sum by (le) (rate(tfs_bridge_stage_seconds_bucket{stage="decode"}[5m])))',  # no such stage
    'tfs_bridge_input_paused{reason="paused"}',
])
def test_a_query_of_something_the_bridge_does_not_expose_returns_nothing(promtool, tmp_path, expr):
    result = run_non_empty_rule_tests(promtool, tmp_path, [("broken", expr)])
    assert result.returncode != 0 and "Empty0" in result.stdout + result.stderr, result.stdout + result.stderr


def test_the_dashboard_has_the_panels_asked_for():
    """Latency quantiles per stage and end to end from histogram buckets, grouped by le (and stage); counters as
    rates, never raw."""
    expressions = [expr for _, expr in dashboard_expressions()]
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(f"histogram_quantile({quantile}, sum by (le) (rate(tfs_bridge_end_to_end_seconds_bucket[" in e
                   for e in expressions), quantile
        for stage in ("fetch", "preprocess", "predict", "commit"):
            assert (f"histogram_quantile({quantile}, sum by (le, stage) "
                    f'(rate(tfs_bridge_stage_seconds_bucket{{stage="{stage}"}}[$__rate_interval])))') in expressions
    for expr in expressions:
        for counter in re.findall(r"\b\w+_(?:total|count|sum|bucket)\b", expr):
            assert re.search(rf"\b(?:rate|increase)\({counter}\b", expr), (counter, expr)


def test_panel_ids_are_unique_and_panels_do_not_overlap():
    panels = all_panels(dashboard()["panels"])
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def provisioned_datasource() -> dict:
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    return datasource


def test_every_panel_and_query_uses_the_provisioned_datasource_by_uid():
    datasource = provisioned_datasource()
    assert datasource["type"] == "prometheus" and datasource["uid"]
    expected = {"type": "prometheus", "uid": datasource["uid"]}
    for panel in all_panels(dashboard()["panels"]):
        assert panel["datasource"] == expected, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == expected, panel["title"]
    assert "${DS_" not in DASHBOARD.read_text() and "__inputs" not in dashboard()  # no import-time placeholders


def test_the_dashboard_has_a_stable_uid_and_no_database_id():
    board = dashboard()
    assert board["uid"] == "tfs-bridge" and board["title"] == "tfs-bridge"
    assert "id" not in board  # Grafana assigns it; a fixed one clashes on import


# --- provisioning ------------------------------------------------------------------------------------------

def compose_mount(service: str, container_path: str) -> Path:
    """The host path a container path of a compose service comes from, through its bind mounts."""
    for volume in yaml.safe_load(COMPOSE_FILE.read_text())["services"][service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith(".") and (container_path == target or container_path.startswith(target + "/")):
            return (ROOT / source / container_path[len(target):].lstrip("/")).resolve()
    raise AssertionError(f"{container_path} is not bind-mounted into {service}")


def test_the_datasource_is_the_compose_prometheus():
    datasource = provisioned_datasource()
    assert datasource["url"] == "http://prometheus:9090" and datasource["access"] == "proxy"
    ports = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["prometheus"]["ports"]
    assert "9090:9090" in ports
    scrape_interval = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape_interval  # what $__rate_interval is computed from


def test_every_file_that_provisioning_names_exists():
    assert compose_mount("grafana", "/etc/grafana/provisioning/datasources") == DATASOURCES.parent
    assert compose_mount("grafana", "/etc/grafana/provisioning/dashboards") == DASHBOARD_PROVIDERS.parent
    (provider,) = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    folder = compose_mount("grafana", provider["options"]["path"])
    assert folder == DASHBOARD.parent and folder.is_dir()
    assert sorted(folder.glob("*.json")) == [DASHBOARD]
    home = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert compose_mount("grafana", home) == DASHBOARD
    assert compose_mount("prometheus", "/etc/prometheus/prometheus.yml") == PROMETHEUS_CONFIG
