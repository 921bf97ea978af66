"""Deployment artefacts: Prometheus config/rules (via promtool), Grafana dashboard, Dockerfile, k8s, launchers.

promtool must be on PATH (Debian's `prometheus` package; CI installs it). Without it these tests
FAIL on purpose: a skipped rules test is an untested alert.

Every flag the manifests and launchers use is checked against `rnncast serve`'s parser (SERVE_FLAGS).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline import metrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "rnncast.json"
K8S = DEPLOY / "k8s"


def _serve_flags() -> frozenset[str]:
    """Every option `rnncast serve` accepts, from its own parser (generated from ServeOptions). Anything else on
    a serve command line must be a Beam pipeline option."""
    import argparse

    from pipeline.cli_serve import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return frozenset(o for action in parser._actions for o in action.option_strings) - {"-h", "--help"}


SERVE_FLAGS = _serve_flags()

ALERTS = (
    "RnncastDown",
    "RnncastNoReadings",
    "RnncastDeadLetterRateHigh",
    "RnncastLatencyP99High",
    "RnncastConsumerLagGrowing",
    "RnncastModelLosesToPersistence",
    "RnncastIntervalUndercoverage",
    "RnncastModelSwapRefused",
    "RnncastKafkaDisconnected",
)


# --------------------------------------------------------------------------- helpers


def promtool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool not found on PATH: install Debian's `prometheus` package "
            "(apt-get update && apt-get install -y prometheus) — it provides /usr/bin/promtool"
        )
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def rules_doc() -> dict:
    return load_yaml(PROM / "rules.yml")


def all_rules() -> list[dict]:
    return [rule for group in rules_doc()["groups"] for rule in group["rules"]]


def alert_rules() -> dict[str, dict]:
    return {r["alert"]: r for r in all_rules() if "alert" in r}


def recording_rule_names() -> set[str]:
    return {r["record"] for r in all_rules() if "record" in r}


PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
    "start",
    "end",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (functions, labels, keywords, durations excluded)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range selectors and subqueries
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)  # label lists
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)  # Grafana variables
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        token = match.group()
        before = s[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":  # 5m, 1e-6
            continue
        if s[match.end() :].lstrip().startswith("("):  # function call
            continue
        if token.lower() in PROMQL_KEYWORDS:
            continue
        names.add(token)
    return names


def allowed_metric_names() -> set[str]:
    """What PromQL may reference: exported names (histograms as _bucket/_sum/_count), rules, `up`."""
    allowed = {"up"} | recording_rule_names()
    for name, kind in metrics.METRIC_TYPES.items():
        if kind == "histogram":
            allowed |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            allowed.add(name)  # counters are listed with their _total suffix
    return allowed


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows
    return panels


def dashboard_exprs() -> list[str]:
    """PromQL of every panel target and annotation (template queries handled separately)."""
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if t.get("expr")]
    exprs += [a["expr"] for a in dashboard()["annotations"]["list"] if a.get("expr")]
    return exprs


def template_queries() -> list[str]:
    out = []
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            out.append(query["query"] if isinstance(query, dict) else query)
    return out


def grafana_to_promql(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$job", "rnncast")
        .replace("$instance", ".*")
    )


def k8s_docs() -> dict[str, dict]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def container() -> dict:
    (c,) = k8s_docs()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def flags_of(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def beam_option_names() -> set[str]:
    from apache_beam.options.pipeline_options import PipelineOptions

    return set(PipelineOptions([]).get_all_options())


def run_launcher(script: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RNNCAST_", "SASL_", "SECURITY_"))}
    for key in ("PROJECT", "REGION", "BUCKET", "BOOTSTRAP", "SDK_IMAGE", "FLINK_MASTER", "DRY_RUN"):
        base.pop(key, None)
    return subprocess.run(
        ["bash", str(script), *args], env={**base, **env}, capture_output=True, text=True, timeout=30, cwd=ROOT
    )


# --------------------------------------------------------------------------- promtool


def test_promtool_check_config():
    result = promtool("check", "config", "deploy/prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules():
    result = promtool("check", "rules", "deploy/prometheus/rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests():
    result = promtool("test", "rules", "deploy/prometheus/rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_dashboard_promql_parses(tmp_path):
    """Every dashboard expression, with Grafana variables substituted, is valid PromQL for promtool."""
    rules = [{"record": f"dashboard:expr{i}", "expr": grafana_to_promql(e)} for i, e in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- Prometheus files


def test_every_deploy_yaml_parses():
    paths = sorted(p for ext in ("yaml", "yml") for p in DEPLOY.rglob(f"*.{ext}"))
    assert len(paths) >= 8
    for path in paths:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"


def test_prometheus_scrapes_rnncast_and_loads_rules():
    config = load_yaml(PROM / "prometheus.yml")
    assert config["rule_files"] == ["rules.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "rnncast"]
    assert job["scrape_interval"] == "5s"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9108"]


def test_every_alert_is_labelled_and_annotated():
    alerts = alert_rules()
    assert set(alerts) == set(ALERTS)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), f"{name} lacks {key}"
    assert (
        "deriv(" in alerts["RnncastConsumerLagGrowing"]["expr"]
        or "delta(" in alerts["RnncastConsumerLagGrowing"]["expr"]
    )
    assert "rnncast_model_skill > 1" in alerts["RnncastModelLosesToPersistence"]["expr"]
    assert 'up{job="rnncast"} == 0' in alerts["RnncastDown"]["expr"]
    assert alerts["RnncastKafkaDisconnected"]["expr"].strip() == "rnncast_kafka_connected == 0"


def test_rules_test_covers_every_alert_firing_and_not_firing():
    suite = load_yaml(PROM / "rules_test.yml")
    firing, quiet = set(), set()
    for case in suite["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing >= set(ALERTS), f"no firing test for {set(ALERTS) - firing}"
    assert quiet >= set(ALERTS), f"no not-firing test for {set(ALERTS) - quiet}"


def test_recording_rules_exist():
    names = recording_rule_names()
    assert {
        "rnncast:readings:rate1m",
        "rnncast:forecast_latency_seconds:p99_5m",
        "rnncast:dead_letters:rate5m",
    } <= names
    assert all(n.startswith("rnncast:") for n in names)


def test_rule_exprs_reference_only_exported_metrics():
    allowed = allowed_metric_names()
    for rule in all_rules():
        unknown = promql_metric_names(rule["expr"]) - allowed
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown metric(s) {unknown}"


# --------------------------------------------------------------------------- the PromQL name extractor itself


@pytest.mark.parametrize(
    "expr, names",
    [
        (
            'sum by (reason) (rate(rnncast_dead_letters_total{job=~"$job", reason!="x"}[$__rate_interval]))',
            {"rnncast_dead_letters_total"},
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(rnncast_step_seconds_bucket[5m]))) > 1e-3",
            {"rnncast_step_seconds_bucket"},
        ),
        (
            'a_total / on (job, instance) group_left (model) b == bool 1 and up{job="x"} offset 5m',
            {"a_total", "b", "up"},
        ),
        ('rnncast:readings:rate1m{job="a{b}"} > 0 unless absent(up)', {"rnncast:readings:rate1m", "up"}),
        ("deriv(sum(x)[10m:1m])", {"x"}),
    ],
)
def test_promql_metric_names(expr, names):
    assert promql_metric_names(expr) == names


def test_name_check_rejects_a_misspelt_metric():
    allowed = allowed_metric_names()
    assert promql_metric_names("rate(rnncast_readings_total[1m])") <= allowed
    for wrong in (
        "rate(rnncast_readings[1m])",
        "rnncast_active_streams_sum",
        "rnncast_forecast_latency_seconds_total",
        "rnncast_readings_created",
    ):
        assert promql_metric_names(wrong) - allowed, wrong


# --------------------------------------------------------------------------- Grafana


def test_dashboard_exprs_reference_only_exported_metrics():
    allowed = allowed_metric_names()
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    for expr in exprs:
        unknown = promql_metric_names(expr) - allowed
        assert not unknown, f"unknown metric(s) {unknown} in: {expr}"
    for query in template_queries():
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
        assert match, query
        assert promql_metric_names(match.group(1)) <= allowed, query


def test_dashboard_shows_every_metric():
    used = set().union(*(promql_metric_names(e) for e in dashboard_exprs()))
    for name, kind in metrics.METRIC_TYPES.items():
        forms = {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
        assert used & forms, f"dashboard does not show {name}"


def test_dashboard_uses_a_prometheus_datasource_variable():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    titles = " | ".join(p["title"] for p in dashboard_panels()).lower()
    for word in (
        "throughput",
        "latency",
        "dead letters",
        "lag",
        "active streams",
        "persistence",
        "skill",
        "model",
        "imputed",
        "interval coverage",
    ):
        assert word in titles, word


def test_dashboard_has_no_per_stream_labels():
    text = DASHBOARD.read_text()
    assert "stream_id" not in text


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_copy_sources_exist():
    copies = [rest for kw, rest in dockerfile_instructions() if kw in ("COPY", "ADD")]
    assert copies
    sources = []
    for rest in copies:
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        sources += parts[:-1]
    assert {"requirements.txt", "setup.py", "models/", "pipeline/"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY source {source} missing from the repository"


def test_dockerfile_base_user_entrypoint_and_cmd():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    entrypoint = json.loads(next(rest for kw, rest in instructions if kw == "ENTRYPOINT"))
    cmd = json.loads(next(rest for kw, rest in instructions if kw == "CMD"))
    assert entrypoint == ["rnncast"] and cmd == ["serve", "--help"]
    # the entrypoint is setup.py's console script, and `serve` is a subcommand of it
    assert re.search(r"[\"']rnncast\s*=\s*pipeline\.cli:main[\"']", (ROOT / "setup.py").read_text())
    from pipeline import cli

    assert "serve" in cli.SUBCOMMANDS


# --------------------------------------------------------------------------- Kubernetes


def test_k8s_has_the_expected_objects():
    assert {"ConfigMap", "Secret", "Deployment", "Service", "PersistentVolumeClaim"} <= set(k8s_docs())


def test_deployment_runs_serve_with_known_flags():
    c = container()
    args = c["args"]
    assert args[0] == "serve" and "command" not in c  # ENTRYPOINT rnncast from the image
    flags = flags_of(args)
    assert set(flags) <= SERVE_FLAGS, set(flags) - SERVE_FLAGS
    value = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--")}
    assert value["--artifact"] == "/artifacts/current"
    assert value["--metrics-host"] == "0.0.0.0"
    assert value["--metrics-port"] == "9108"
    assert "--bootstrap" in value
    assert not any("password" in a.lower() for a in args if not a.startswith("--"))


def test_deployment_variables_resolve_to_configmap_and_secret():
    docs = k8s_docs()
    c = container()
    config = docs["ConfigMap"]
    assert c["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    defined = set(config["data"]) | {e["name"] for e in c["env"]}
    referenced = {m for a in c["args"] for m in re.findall(r"\$\((\w+)\)", a)}
    assert referenced and referenced <= defined, referenced - defined
    secret = docs["Secret"]
    (password,) = [e for e in c["env"] if e["name"] == "RNNCAST_KAFKA_PASSWORD"]
    ref = password["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret.get("stringData", {}) | secret.get("data", {})
    assert not any("PASSWORD" in k for k in config["data"])


def test_deployment_probes_ports_volumes_and_security():
    docs = k8s_docs()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    c = container()
    (port,) = c["ports"]
    assert port["containerPort"] == 9108
    for probe in ("livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/metrics" and get["port"] in (port["name"], 9108), probe
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["artifacts"]["mountPath"] == "/artifacts" and mounts["artifacts"]["readOnly"]
    claim = volumes["artifacts"]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert set(mounts) <= set(volumes)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert docs["Deployment"]["spec"]["replicas"] == 1
    assert docs["Deployment"]["spec"]["strategy"]["type"] == "Recreate"


def test_service_selects_the_pod_and_is_scraped():
    docs = k8s_docs()
    service = docs["Service"]
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == 9108 and port["targetPort"] == container()["ports"][0]["name"]
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9108"
    assert annotations["prometheus.io/path"] == "/metrics"


def kafka_parser():
    import argparse

    from pipeline.kafka_config import add_kafka_arguments

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_kafka_arguments(parser)
    return parser


def kafka_part(argv: list[str], parser) -> list[str]:
    """The Kafka connection options (flag, value) of a serve command line."""
    kafka_flags = {o for a in parser._actions for o in a.option_strings} - {"-h", "--help"}
    out = []
    for i, arg in enumerate(argv):
        flag = arg.split("=", 1)[0]
        if flag in kafka_flags:
            out += [arg] if "=" in arg else [arg, argv[i + 1]]
    return out


def test_deployment_kafka_options_parse_with_the_shared_kafka_parser():
    """The Kafka flags and the ConfigMap's values are accepted by pipeline.kafka_config (choices included)."""
    parser = kafka_parser()
    kafka_flags = {o for a in parser._actions for o in a.option_strings} - {"-h", "--help"}
    assert kafka_flags <= SERVE_FLAGS, kafka_flags - SERVE_FLAGS
    data = k8s_docs()["ConfigMap"]["data"]
    args = [re.sub(r"\$\((\w+)\)", lambda m: data[m.group(1)], a) for a in container()["args"]]
    parsed = parser.parse_args(kafka_part(args, parser))
    assert parsed.security_protocol == "SASL_SSL" and parsed.sasl_mechanism and parsed.sasl_username
    assert parsed.sasl_password_file is None  # the password comes from RNNCAST_KAFKA_PASSWORD


# --------------------------------------------------------------------------- launch scripts

LAUNCH = DEPLOY / "launch.sh"
FLINK_ENV = {"DRY_RUN": "1", "FLINK_MASTER": "jm:8081", "BOOTSTRAP": "kafka:9093"}
DATAFLOW_ENV = {
    "DRY_RUN": "1",
    "PROJECT": "p",
    "REGION": "europe-west1",
    "BUCKET": "b",
    "BOOTSTRAP": "kafka:9093",
    "SDK_IMAGE": "img:1",
}


def test_launch_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(LAUNCH)], capture_output=True).returncode == 0
    assert os.access(LAUNCH, os.X_OK), f"{LAUNCH} is not executable"


@pytest.mark.parametrize(
    "target, env, extra, required",
    [
        (
            "flink",
            FLINK_ENV,
            ["--flink_submit_uber_jar"],
            {"--runner=FlinkRunner", "--flink_master=jm:8081", "--environment_type=EXTERNAL", "--streaming"},
        ),
        (
            "dataflow",
            DATAFLOW_ENV,
            ["--update"],
            {
                "--runner=DataflowRunner",
                "--project=p",
                "--region=europe-west1",
                "--temp_location=gs://b/rnncast/tmp",
                "--streaming",
                "--sdk_container_image=img:1",
            },
        ),
    ],
)
def test_launch_script_builds_a_serve_command_with_known_options(target, env, extra, required):
    result = run_launcher(LAUNCH, {**env, "RNNCAST_KAFKA_PASSWORD": "s3cret-value"}, target, *extra)
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    assert argv[:2] == ["rnncast", "serve"]
    assert required <= set(argv), required - set(argv)
    assert argv[-len(extra) :] == extra
    beam = beam_option_names()
    for flag in flags_of(argv[2:]):
        assert flag in SERVE_FLAGS or flag[2:] in beam, f"{target}: unknown option {flag}"
    assert "s3cret-value" not in result.stdout
    kafka_parser().parse_args(kafka_part(argv, kafka_parser()))


@pytest.mark.parametrize("target, env", [("flink", FLINK_ENV), ("dataflow", DATAFLOW_ENV)])
def test_launch_script_leaves_unset_serve_options_to_rnncast(target, env):
    """Serve options the operator does not set are not passed: `rnncast serve` holds the only defaults."""
    unset = run_launcher(LAUNCH, {**env, "RNNCAST_KAFKA_PASSWORD": "x"}, target)
    assert unset.returncode == 0, unset.stderr
    assert "--state-shards" not in shlex.split(unset.stdout) and "--group" not in shlex.split(unset.stdout)
    every = {
        "INPUT_TOPIC": "in",
        "OUTPUT_TOPIC": "out",
        "DLQ_TOPIC": "dlq",
        "GROUP": "g",
        "STATE_SHARDS": "32",
        "GUARANTEE": "exactly-once",
        "STATE_TTL": "3600",
    }
    given = run_launcher(LAUNCH, {**env, "RNNCAST_KAFKA_PASSWORD": "x", **every}, target)
    argv = shlex.split(given.stdout)
    assert argv[argv.index("--state-shards") + 1] == "32" and argv[argv.index("--group") + 1] == "g"
    assert {"--input-topic", "--output-topic", "--dlq-topic", "--guarantee", "--state-ttl"} <= set(argv)
    beam = beam_option_names()
    for flag in flags_of(argv[2:]):
        assert flag in SERVE_FLAGS or flag[2:] in beam, f"{target}: unknown option {flag}"


@pytest.mark.parametrize(
    "target, env, missing", [("flink", FLINK_ENV, "FLINK_MASTER"), ("dataflow", DATAFLOW_ENV, "PROJECT")]
)
def test_launch_script_requires_its_settings(target, env, missing):
    result = run_launcher(LAUNCH, {k: v for k, v in env.items() if k != missing}, target)
    assert result.returncode != 0 and missing in result.stderr


def test_launch_script_requires_a_target():
    result = run_launcher(LAUNCH, FLINK_ENV, "spark")
    assert result.returncode == 2 and "flink or dataflow" in result.stderr


@pytest.mark.parametrize("target, env", [("flink", FLINK_ENV), ("dataflow", DATAFLOW_ENV)])
def test_launch_script_refuses_sasl_without_a_password(target, env):
    env = {k: v for k, v in env.items() if k != "DRY_RUN"}
    result = run_launcher(LAUNCH, {**env, "SECURITY_PROTOCOL": "SASL_SSL"}, target)
    assert result.returncode == 2 and "RNNCAST_KAFKA_PASSWORD" in result.stderr


def test_flink_readme_documents_runner_options_and_kafkaio():
    text = (DEPLOY / "flink" / "README.md").read_text()
    for needle in (
        "--runner=FlinkRunner",
        "--flink_master",
        "--environment_type",
        "KafkaIO",
        "RNNCAST_KAFKA_PASSWORD",
        "launch.sh",
    ):
        assert needle in text, needle
    launcher = LAUNCH.read_text()
    for needle in ("--runner=DataflowRunner", "--project", "--region", "--temp_location", "--streaming"):
        assert needle in launcher, needle
    assert "KafkaIO" in (DEPLOY / "dataflow" / "README.md").read_text()


def test_every_serve_option_is_documented_in_help(capsys):
    """`rnncast serve --help` shows every option the deploy files may use (none is hidden)."""
    from pipeline.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    missing = sorted(flag for flag in SERVE_FLAGS if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text))
    assert not missing, missing
