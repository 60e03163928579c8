"""The ROI dashboard (exercise 10.3, deploy/grafana/dashboards/llm-roi.json): every query parses as PromQL
(promql-parser, a real parser), selects only series that both our server and vLLM export, and its arithmetic
equals common.hardware.cost for the same price and measured rates."""
from __future__ import annotations

import json
import operator
import random

import promql_parser
import pytest
from test_deploy import DEPLOY, server_series, vllm_series

from common.hardware.cost import usd_per_million_tokens

ROI = DEPLOY / "grafana" / "dashboards" / "llm-roi.json"
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def dashboard() -> dict:
    return json.loads(ROI.read_text())


def variables(dash: dict) -> dict[str, str]:
    return {v["name"]: v["current"]["value"] for v in dash["templating"]["list"]}


def queries(dash: dict) -> dict[str, str]:
    """Panel title -> PromQL with the dashboard's variables substituted (Grafana does this before querying)."""
    values = variables(dash)
    out = {}
    for panel in dash["panels"]:
        (target,) = panel["targets"]
        expr = target["expr"]
        for name, value in values.items():
            expr = expr.replace(f"${name}", value)
        out[panel["title"]] = expr
    return out


def selectors(node) -> set[str]:
    """Metric names of every vector selector in a parsed expression."""
    if isinstance(node, promql_parser.VectorSelector):
        return {node.name}
    if isinstance(node, promql_parser.MatrixSelector):
        return selectors(node.vector_selector)
    children = [getattr(node, a, None) for a in ("lhs", "rhs", "expr")] + list(getattr(node, "args", None) or [])
    return set().union(*(selectors(c) for c in children if c is not None))


def evaluate(node, series: dict[str, float]) -> float:
    """Evaluate a scalar PromQL expression, with each aggregate replaced by a value keyed by its metric name."""
    if isinstance(node, promql_parser.NumberLiteral):
        return node.val
    if isinstance(node, promql_parser.ParenExpr):
        return evaluate(node.expr, series)
    if isinstance(node, promql_parser.BinaryExpr):
        return OPS[str(node.op)](evaluate(node.lhs, series), evaluate(node.rhs, series))
    if isinstance(node, promql_parser.AggregateExpr):
        (name,) = selectors(node)
        return series[f"{node.op}:{name}"]
    raise TypeError(f"unexpected node {type(node).__name__}")


def test_roi_queries_parse_and_use_series_both_servers_export():
    dash = dashboard()
    assert dash["uid"] and len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    assert "gpu_usd_per_hour" in variables(dash)
    ours, vllm = server_series(), vllm_series()
    for title, expr in queries(dash).items():
        names = selectors(promql_parser.parse(expr))
        assert names and names <= ours & vllm, (title, names - (ours & vllm))
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(vllm:generation_tokens_total[5m])")


def test_roi_arithmetic_equals_common_cost():
    dash = dashboard()
    price = float(variables(dash)["gpu_usd_per_hour"])
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    replicas, req_ps = rng.randint(1, 8), rng.uniform(1, 50)
    out_tps, in_tps = rng.uniform(50, 5000), rng.uniform(50, 5000)
    series = {"count:vllm:num_requests_running": replicas, "sum:vllm:generation_tokens_total": out_tps,
              "sum:vllm:prompt_tokens_total": in_tps, "sum:vllm:request_success_total": req_ps}
    got = {title: evaluate(promql_parser.parse(expr), series) for title, expr in queries(dash).items()}
    fleet = price * replicas
    want = {"$ per 1M output tokens": usd_per_million_tokens(out_tps, fleet),
            "$ per 1M tokens (prompt + output)": usd_per_million_tokens(out_tps + in_tps, fleet),
            "$ per request": fleet / 3600 / req_ps,
            "Output tokens/s per replica": out_tps / replicas}
    assert got.keys() == want.keys()
    for title in want:
        assert got[title] == pytest.approx(want[title], rel=1e-12), f"seed {seed}: {title}"
