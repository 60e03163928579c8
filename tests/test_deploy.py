"""Checks every file in deploy/: it parses, it is structurally valid for its tool, and it refers to
things that exist (repo files, compose services, ports, metric names our server and vLLM export).
The book's versions (tests/data/ch10_book/) are run through the same checks to show where they fail.
"""
from __future__ import annotations

import fnmatch
import importlib.util
import io
import json
import os
import re
import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from common.paths import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
BOOK = Path(__file__).parent / "data" / "ch10_book"
K8S_VERSION = "1.33.0"
SERVER_PORT = 8000
# vLLM's Docker image (target vllm-openai) ends with ENTRYPOINT ["vllm", "serve"].
VLLM_IMAGE_ENTRYPOINT = ["vllm", "serve"]
OPENAI_ROUTES = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"}


def skip_or_fail_in_ci(reason: str) -> None:
    """Skip on a reader's machine; fail in CI (env CI set, as GitHub Actions does), where `make setup` installed
    everything and a missing peer means the checks against it would silently stop running."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
        pytest.fail(f"{reason} (CI is set: setup must install it)", pytrace=False)
    pytest.skip(reason)


# ---- metric names ---------------------------------------------------------------------------------
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",)}


def vllm_series() -> set[str]:
    """Series names vLLM's V1 Prometheus logger exports, read from the installed vllm source."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        skip_or_fail_in_ci("vllm is not installed")
    src = (Path(spec.submodule_search_locations[0]) / "v1" / "metrics" / "loggers.py").read_text()
    kinds = re.findall(r'_(gauge|counter|histogram)_cls\(\s*name="(vllm:[a-z0-9_]+)"', src)
    assert len(kinds) > 20, "vLLM's metric definitions moved; update the pattern"
    return {name + suffix for kind, name in kinds for suffix in SUFFIXES[kind]}


def server_series() -> set[str]:
    """Series names in a /metrics page of our server (common.serve), parsed with prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families
    text = server_metrics_text()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers that are not functions, keywords,
    label names (inside {} or by/without/on/ignoring lists), durations or strings."""
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', "", expr)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    names = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end():].lstrip().startswith("(") or m.group(0).lower() in PROMQL_WORDS:
            continue
        names.add(m.group(0))
    return names


def test_promql_metric_names():
    expr = ('histogram_quantile(0.99, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{model="a"}[5m])))'
            ' / ignoring(x) sum(up offset 5m) > 2')
    assert promql_metric_names(expr) == {"vllm:time_to_first_token_seconds_bucket", "up"}


@pytest.mark.parametrize("ci,outcome", [("true", pytest.fail.Exception), ("1", pytest.fail.Exception),
                                        ("", pytest.skip.Exception), ("false", pytest.skip.Exception)])
def test_missing_vllm_fails_in_ci_and_skips_elsewhere(monkeypatch, ci, outcome):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="vllm is not installed"):
        vllm_series()


# ---- the server's metrics and routes ------------------------------------------------------------------
def server_metrics_text() -> str:
    """A /metrics page rendered by our server's own metrics class (every series exists from the start)."""
    from common.serve.metrics import EngineMetrics
    return EngineMetrics("smollm2-135m").render().decode()


def server_routes() -> set[str]:
    """The paths the FastAPI app of common/serve/app.py serves, read from `app.routes` (the app is built
    on a stand-in engine: building it touches only the tokenizer and limits; nothing is started)."""
    from types import SimpleNamespace

    from fastapi.routing import APIRoute

    from common.serve.app import create_app

    tok = SimpleNamespace(encode=lambda text, **kw: [], apply_chat_template=lambda *a, **kw: "")
    app = create_app(SimpleNamespace(tokenizer=tok, max_model_len=2048, vocab_size=49152), "smollm2-135m")
    return {route.path for route in app.routes if isinstance(route, APIRoute)}


def test_server_exports_the_vllm_names_we_rely_on():
    ours = server_series()
    assert {"vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:request_success_total",
            "vllm:time_to_first_token_seconds_bucket"} <= ours
    assert ours & vllm_series() == ours - {n for n in ours if not n.startswith("vllm:")}
    assert server_routes() == OPENAI_ROUTES


# ---- YAML / Kubernetes ----------------------------------------------------------------------------
def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_docs(path)]


def by_kind(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def test_every_k8s_file_parses_and_validates_strictly():
    files = sorted(K8S.glob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        docs = load_docs(path)
        assert docs, path
        for doc in docs:
            for key in ("apiVersion", "kind", "metadata"):
                assert key in doc, (path.name, key)
            assert isinstance(doc["metadata"].get("name"), str)
            # the bundled OpenAPI JSON schemas; strict = unknown fields are errors (typos)
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_validation_catches_a_broken_manifest():
    deploy = by_kind(k8s_objects(), "Deployment")["llm-server"]
    broken = json.loads(json.dumps(deploy))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = json.loads(json.dumps(deploy))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def container_port(container: dict, port: int | str) -> int:
    """A probe/targetPort may name a port; resolve it to the number."""
    for p in container.get("ports", []):
        if port in (p["containerPort"], p.get("name")):
            return p["containerPort"]
    raise AssertionError(f"port {port!r} is not declared by container {container['name']}")


def test_deployments_have_image_ports_and_health_probes():
    deployments = by_kind(k8s_objects(), "Deployment")
    assert {"llm-server", "vllm"} <= set(deployments)
    for name, dep in deployments.items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        for c in dep["spec"]["template"]["spec"]["containers"]:
            assert c["image"] and ":" in c["image"] and not c["image"].endswith(":latest"), c["image"]
            assert [p["containerPort"] for p in c["ports"]] == [SERVER_PORT]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                get = c[probe]["httpGet"]
                assert get["path"] == "/health", (name, probe)
                assert container_port(c, get["port"]) == SERVER_PORT
            args = c.get("command", []) + c.get("args", [])
            assert args[args.index("--port") + 1] == str(SERVER_PORT)
            assert "requests" in c["resources"] and "memory" in c["resources"]["limits"]


def test_vllm_deployment_runs_vllm_serve_with_shm():
    dep = by_kind(k8s_objects(), "Deployment")["vllm"]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == VLLM_IMAGE_ENTRYPOINT and c["image"].startswith("vllm/vllm-openai:")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    shm = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert shm and volumes[shm[0]["name"]]["emptyDir"]["medium"] == "Memory"
    pvcs = by_kind(k8s_objects(), "PersistentVolumeClaim")
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims and all(c in pvcs for c in claims)


def test_our_server_runs_as_the_dockerfile_user():
    pod = by_kind(k8s_objects(), "Deployment")["llm-server"]["spec"]["template"]["spec"]
    uid = int(re.search(r"--uid (\d+)", (DEPLOY / "Dockerfile.cpu").read_text()).group(1))
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": uid}


def test_services_select_their_deployments():
    objs = k8s_objects()
    deployments, services = by_kind(objs, "Deployment"), by_kind(objs, "Service")
    assert set(services) == set(deployments)
    for name, svc in services.items():
        dep = deployments[name]
        assert svc["metadata"]["namespace"] == dep["metadata"]["namespace"]
        assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        c = dep["spec"]["template"]["spec"]["containers"][0]
        assert [container_port(c, p["targetPort"]) for p in svc["spec"]["ports"]] == [SERVER_PORT]


def adapter_rules() -> dict[str, str]:
    """Custom-metric name the adapter serves -> the Prometheus series it reads."""
    cm = by_kind(k8s_objects(), "ConfigMap")["prometheus-adapter"]
    rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    out = {}
    for r in rules:
        series = promql_metric_names(r["seriesQuery"])
        assert len(series) == 1, r["seriesQuery"]
        (name,) = series
        assert re.fullmatch(r["name"]["matches"], name), r
        out[re.sub(r["name"]["matches"], r["name"]["as"], name)] = name
        assert {"<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"} <= set(re.findall(r"<<[^>]+>>", r["metricsQuery"]))
    return out


def hpa_series(hpa: dict, rules: dict[str, str]) -> list[str]:
    """The Prometheus series behind each metric of an HPA (Resource metrics have none)."""
    out = []
    for m in hpa["spec"]["metrics"]:
        if m["type"] == "Resource":
            continue
        name = m[m["type"].lower()]["metric"]["name"]
        assert name in rules, f"HPA metric {name!r} is served by no prometheus-adapter rule"
        out.append(rules[name])
    return out


def test_hpas_target_deployments_and_scale_on_exported_metrics():
    objs = k8s_objects()
    hpas, deployments = by_kind(objs, "HorizontalPodAutoscaler"), by_kind(objs, "Deployment")
    assert set(hpas) == set(deployments)
    exported = server_series() & vllm_series()
    rules = adapter_rules()
    for name, hpa in hpas.items():
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", name)
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        series = hpa_series(hpa, rules)
        assert series and set(series) <= exported, series
        assert all(m["type"] == "Pods" for m in hpa["spec"]["metrics"])


def ingress_nginx_upstream_uri(ingress: dict, uri: str) -> str | None:
    """The URI the backend receives, as ingress-nginx rewrites it: with rewrite-target the path is a
    regex (location ~* ^path) and `rewrite (?i)path target break;` replaces the *whole* URI by the
    target with $1..$n substituted. None: no path of the Ingress matches."""
    ann = ingress["metadata"].get("annotations", {})
    target = ann.get("nginx.ingress.kubernetes.io/rewrite-target")
    regex = target is not None or ann.get("nginx.ingress.kubernetes.io/use-regex") == "true"
    for rule in ingress["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            path = p["path"]
            if regex:
                m = re.match(path, uri, re.IGNORECASE)
                if not m:
                    continue
                if target is None:
                    return uri
                return re.sub(r"\$(\d)", lambda g: m.group(int(g.group(1))) or "", target)
            if uri == path or uri.startswith(path.rstrip("/") + "/") or (p["pathType"] == "Prefix" and path == "/"):
                return uri
    return None


def test_ingress_keeps_openai_paths_and_book_rewrite_breaks_them():
    ingresses = by_kind(k8s_objects(), "Ingress")
    services = by_kind(k8s_objects(), "Service")
    for ing in ingresses.values():
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                svc = services[p["backend"]["service"]["name"]]
                assert p["backend"]["service"]["port"]["name"] in [sp["name"] for sp in svc["spec"]["ports"]]
        assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"  # SSE
    for route in ("/v1/chat/completions", "/v1/completions", "/v1/models"):
        assert ingress_nginx_upstream_uri(ingresses["llm-server"], route) == route
        assert ingress_nginx_upstream_uri(ingresses["vllm"], "/vllm" + route) == route
    assert ingress_nginx_upstream_uri(ingresses["vllm"], "/vllm/v1") == "/v1"
    # 勘误: the book's Ingress sends every request to "/", which no OpenAI route serves
    (book,) = by_kind(load_docs(BOOK / "ingress_004.yaml"), "Ingress").values()
    kubernetes_validate.validate(book, K8S_VERSION, strict=True)       # schema-valid, yet broken
    assert ingress_nginx_upstream_uri(book, "/v1/chat/completions") == "/"
    assert "/" not in OPENAI_ROUTES


INTERNAL_ROUTES = ("/metrics", "/health", "/docs", "/openapi.json")


def test_ingress_exposes_only_the_api_not_metrics():
    """Prometheus scrapes pods inside the cluster; from outside, /metrics (queue depths, request counts,
    model names) and the docs must not be reachable through either Ingress (it has no auth of its own)."""
    ingresses = by_kind(k8s_objects(), "Ingress")
    for route in INTERNAL_ROUTES:
        assert ingress_nginx_upstream_uri(ingresses["llm-server"], route) is None, route
        assert ingress_nginx_upstream_uri(ingresses["vllm"], "/vllm" + route) is None, route
    assert ingress_nginx_upstream_uri(ingresses["vllm"], "/vllm/v1metrics") is None


def _flag(args: list[str], name: str, default: float) -> float:
    return float(args[args.index(name) + 1]) if name in args else default


def test_shutdown_timing_agrees():
    """k8s: preStop sleep, then SIGTERM; uvicorn drains for --shutdown-timeout; SIGKILL at the grace period.
    grace > preStop + shutdown timeout, or the kubelet kills streams uvicorn is still draining; and the
    preStop sleep must cover endpoint removal (a few seconds) so no new request arrives after SIGTERM."""
    from common.serve.__main__ import parse_args
    default_timeout = parse_args([]).shutdown_timeout
    deployment = by_kind(k8s_objects(), "Deployment")["llm-server"]
    pod = deployment["spec"]["template"]["spec"]
    (server,) = [c for c in pod["containers"] if c["name"] == "server"]
    pre_stop = server["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep", pre_stop
    sleep_s = float(pre_stop[1])
    shutdown_s = _flag(server["args"], "--shutdown-timeout", default_timeout)
    grace_s = pod["terminationGracePeriodSeconds"]
    assert sleep_s >= 5, "preStop must outlast the endpoint removal (kube-proxy / ingress resync)"
    assert grace_s > sleep_s + shutdown_s, (grace_s, sleep_s, shutdown_s)
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["llm"]
    stop_grace = compose.get("stop_grace_period", "10s")
    compose_shutdown = _flag(compose["command"], "--shutdown-timeout", default_timeout)
    assert float(stop_grace.rstrip("s")) > compose_shutdown, (stop_grace, compose_shutdown)


def test_book_k8s_yaml_is_not_valid_yaml():
    # 勘误: the nginx config pasted after '---' inside the YAML block
    with pytest.raises(yaml.YAMLError):
        load_docs(BOOK / "k8s_nginx_001.yaml")


def test_book_hpas_scale_on_metrics_nobody_exports():
    exported = server_series() | vllm_series()
    for path in (BOOK / "hpa_001.yaml", BOOK / "k8s_004.yaml"):
        (hpa,) = by_kind(load_docs(path), "HorizontalPodAutoscaler").values()
        kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)
        names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        assert names and not set(names) & exported, names
        with pytest.raises(AssertionError, match="no prometheus-adapter rule"):
            hpa_series(hpa, adapter_rules())


# ---- Prometheus and Grafana --------------------------------------------------------------------
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_services_ports_and_volumes():
    svc = compose()["services"]
    assert {"llm", "prometheus", "grafana"} <= set(svc)
    assert (REPO_ROOT / svc["llm"]["build"]["dockerfile"]).resolve() == (DEPLOY / "Dockerfile.cpu").resolve()
    assert (DEPLOY / svc["llm"]["build"]["context"]).resolve() == REPO_ROOT.resolve()
    cmd = svc["llm"]["command"]
    assert cmd[cmd.index("--port") + 1] == str(SERVER_PORT)
    assert f"{SERVER_PORT}:{SERVER_PORT}" in svc["llm"]["ports"]
    for name, s in svc.items():
        for vol in s.get("volumes", []):
            src = vol.split(":")[0]
            assert (DEPLOY / src).exists(), (name, src)
    assert "service_healthy" in json.dumps(svc["prometheus"]["depends_on"])   # needs the image HEALTHCHECK


def test_prometheus_scrapes_the_compose_service():
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"llm:{SERVER_PORT}"] and "llm" in compose()["services"]
    mounted = {v.split(":")[1] for v in compose()["services"]["prometheus"]["volumes"]}
    assert set(prom["rule_files"]) <= mounted


def alert_exprs(path: Path) -> list[str]:
    return [r["expr"] for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def ratio_sides_aggregated(expr: str) -> bool:
    """a / b > x: both sides aggregated first; otherwise PromQL matches series label set by label set
    and an error/total ratio compares each error series with itself (the book's HighErrorRate)."""
    sides = re.split(r"[<>]=?", expr)[0].split("/")
    return all(side.strip().startswith(("sum(", "max(", "avg(", "sum by", "max by", "avg by")) for side in sides)


def test_alert_rules_use_exported_metrics():
    exported = server_series() & vllm_series()
    exprs = alert_exprs(DEPLOY / "prometheus" / "alerts.yml")
    assert exprs
    for e in exprs:
        names = promql_metric_names(e)
        assert names and names <= exported, (e, names - exported)
        if "/" in e:
            assert ratio_sides_aggregated(e), e
    book_ratios = [e for e in alert_exprs(BOOK / "alerts_001.yaml") if "/" in e]
    assert book_ratios and not any(ratio_sides_aggregated(e) for e in book_ratios)      # 勘误


def grafana_exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_grafana_dashboard_queries_exported_metrics():
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "llm-serving.json").read_text())
    assert dash["uid"] and dash["panels"] and {p["type"] for p in dash["panels"]} <= {"timeseries", "gauge", "stat"}
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    ours, vllm = server_series(), vllm_series()
    for expr in grafana_exprs(dash):
        names = promql_metric_names(expr)
        assert names and names <= ours, (expr, names - ours)
        assert names <= vllm, (expr, names - vllm)
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {ds["uid"]}
    assert ds["url"] == "http://prometheus:9090" and "prometheus" in compose()["services"]
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/dashboards.yml").read_text())["providers"][0]
    mounts = dict(reversed(v.split(":")[:2]) for v in compose()["services"]["grafana"]["volumes"])
    assert (DEPLOY / mounts[prov["options"]["path"]] / "llm-serving.json").exists()


def test_book_monitoring_queries_use_invented_metric_names():
    # 勘误: the book's dashboard/alerts/metric list name series that neither server exports
    exported = server_series() | vllm_series()
    book_dash = yaml.safe_load((BOOK / "grafana_dashboard_001.yaml").read_text())["dashboard"]
    book_exprs = grafana_exprs(book_dash) + alert_exprs(BOOK / "alerts_001.yaml")
    missing = {n for e in book_exprs for n in promql_metric_names(e)} - exported
    assert missing == {"vllm_requests_total", "vllm_request_duration_seconds_bucket",
                       "vllm_gpu_utilization_percent", "vllm_kv_cache_usage_percent",
                       "vllm_throughput_tokens_per_second"}
    listed_004 = {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:gpu_cache_usage_perc",
                  "vllm:avg_generation_throughput_toks_per_s", "vllm:avg_time_to_first_token_seconds",
                  "vllm:avg_time_per_output_token_seconds"}
    assert listed_004 - vllm_series() == listed_004 - {"vllm:num_requests_running", "vllm:num_requests_waiting"}


# ---- Dockerfiles ---------------------------------------------------------------------------------
def instructions(path: Path) -> list[tuple[str, str]]:
    parser = DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))
    return [(i["instruction"], i["value"]) for i in parser.structure if i["instruction"] != "COMMENT"]


def exec_form(value: str) -> list[str] | None:
    """["a", "b"] -> list; shell form -> None."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, list) else None


def effective_argv(path: Path, base_entrypoint: list[str] | None = None) -> list[str]:
    """What the container runs: ENTRYPOINT (own, else the base image's) + CMD, as Docker combines
    them; a shell-form instruction becomes ["/bin/sh", "-c", text]."""
    entry, cmd = base_entrypoint or [], []
    for ins, value in instructions(path):
        argv = exec_form(value) or ["/bin/sh", "-c", value]
        if ins == "ENTRYPOINT":
            entry, cmd = argv, []          # a new ENTRYPOINT also resets an inherited CMD
        elif ins == "CMD":
            cmd = argv
    return entry + cmd


def dockerignored(rel: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for a top-level path: the last matching pattern wins, '!' re-includes."""
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(rel.split("/")[0], pat):
            ignored = not neg
    return ignored


DOCKERFILES = ["Dockerfile.cpu", "Dockerfile.cuda"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_existing_files_and_runs_our_server(name):
    path = DEPLOY / name
    ins = instructions(path)
    kinds = [k for k, _ in ins]
    assert kinds[0] == "FROM" and "USER" in kinds and "HEALTHCHECK" in kinds
    ignore = [line.strip() for line in (DEPLOY / f"{name}.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    for kind, value in ins:
        if kind == "COPY":
            parts = [p for p in shlex.split(value) if not p.startswith("--")]
            for src in parts[:-1]:
                assert (REPO_ROOT / src).exists(), src
                assert not dockerignored(src.rstrip("/"), ignore), f"{src} is excluded by the .dockerignore"
        if kind == "USER":
            assert value not in ("root", "0")
    assert dockerignored(".venv", ignore) and dockerignored(".cache", ignore)
    argv = effective_argv(path)
    assert argv[:3] == ["python", "-m", "common.serve"]
    port = argv[argv.index("--port") + 1]
    (expose,) = [v for k, v in ins if k == "EXPOSE"]
    assert expose == port == str(SERVER_PORT)
    (health,) = [v for k, v in ins if k == "HEALTHCHECK"]
    assert f"127.0.0.1:{port}/health" in health
    reqs = "requirements.txt" if name.endswith("cpu") else "requirements-gpu.txt"
    assert any(k == "RUN" and f"pip install -r {reqs}" in v for k, v in ins)
    assert any(k == "RUN" and "--no-deps -r requirements-nodeps.txt" in v for k, v in ins)


def test_book_dockerfile_never_starts_its_server():
    # 勘误: shell-form CMD is appended to the base image's ENTRYPOINT ["vllm", "serve"]
    argv = effective_argv(BOOK / "Dockerfile_004", VLLM_IMAGE_ENTRYPOINT)
    assert argv[:4] == ["vllm", "serve", "/bin/sh", "-c"]      # `vllm serve /bin/sh -c "python -m ..."`
    # and ours, built FROM the same image, would be right because it sets its own ENTRYPOINT
    assert effective_argv(DEPLOY / "Dockerfile.cpu", VLLM_IMAGE_ENTRYPOINT)[:3] == ["python", "-m", "common.serve"]
