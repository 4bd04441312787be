#!/usr/bin/env bash
# Checks deploy/grafana/sockwarden.json and deploy/prometheus/sockwarden-alerts.yml:
#  1. the dashboard is JSON (python3 -m json.tool);
#  2. every sockwarden_* metric their expressions use is documented in
#     docs/metrics.md (its table), every label they match or group by is one
#     that metric's row names, and every label value matched with = or != is
#     one its row lists;
#  3. the rules pass `promtool check rules` and their unit tests
#     (deploy/prometheus/sockwarden-alerts.test.yml, `promtool test rules`);
#     every dashboard query passes promtool too, as a recording rule of a
#     scratch rules file, with Grafana's variables replaced;
#  4. the dashboard has what Grafana's dashboard schema requires, checked
#     field by field below (known top-level, panel and row fields; a unique
#     integer id, type, title and a gridPos inside the 24-column grid and
#     overlapping no other for every panel; targets with refIds, an expr
#     and the ${datasource} data source; templating, annotations,
#     schemaVersion, uid, title), and with
#     GRAFANA_DASHBOARD_SCHEMA=path/to/dashboard.jsonschema.json (the
#     grafana-foundation-sdk repository's jsonschema/), against that schema.
# Installs promtool (Debian's prometheus package) like scripts/setup.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."

dashboard=deploy/grafana/sockwarden.json
rules=deploy/prometheus/sockwarden-alerts.yml
tests=deploy/prometheus/sockwarden-alerts.test.yml

if ! command -v promtool >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "check-dashboards.sh: promtool is missing and not root: install Debian's prometheus package" >&2
    exit 1
  fi
  echo "check-dashboards.sh: installing prometheus (for promtool)" >&2
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp /tmp/sockwarden-check-dashboards.XXXXXX)
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "check-dashboards.sh: installing prometheus failed (log above)" >&2
    exit 1
  fi
  rm -f "$log"
fi

scratch=$(mktemp -d /tmp/sockwarden-check-dashboards.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

echo "== json: python3 -m json.tool $dashboard"
python3 -m json.tool "$dashboard" >/dev/null

echo "== dashboard structure, metric names, labels and values"
python3 - "$dashboard" "$rules" docs/metrics.md "$scratch/queries.yml" <<'PY'
import json, re, sys
import yaml

dash_path, rules_path, docs_path, queries_out = sys.argv[1:5]
dash = json.load(open(dash_path))
rules = yaml.safe_load(open(rules_path))
errors = []
def err(msg):
    if msg not in errors:
        errors.append(msg)

# ---- docs/metrics.md: name -> labels, listed values
docs = {}
for line in open(docs_path):
    if not line.startswith("| `sockwarden_"):
        continue
    cols = [c.strip() for c in line.strip().strip("|").split("|")]
    name = cols[0].strip("`")
    labels_col, meaning = cols[2], " ".join(cols[3:])
    # Label names: the first backticked word of each top-level comma item,
    # outside parentheses; after "`label`: values" the rest are its values.
    flat, depth = "", 0
    for ch in labels_col:
        depth += ch == "("
        if depth == 0:
            flat += ch
        depth -= ch == ")" and depth > 0
    labels = set()
    for item in flat.split(","):
        m = re.search(r"`([a-z_]+)`", item)
        if m:
            labels.add(m.group(1))
        if re.search(r"`[a-z_]+`\s*:", item):
            break
    values = set(re.findall(r"`([^`]+)`", labels_col + " " + meaning))
    docs[name] = {"type": cols[1], "labels": labels, "values": values}
if not docs:
    err(f"{docs_path}: no metric table rows found")

TARGET_LABELS = {"instance", "job"}
GRAFANA_VARS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "policy": ".*"}

def prom(expr):
    """The expression as Prometheus sees it, Grafana's variables replaced."""
    def sub(m):
        v = m.group(1) or m.group(2)
        if v not in GRAFANA_VARS:
            err(f"unknown variable ${v} in: {expr}")
            return "x"
        return GRAFANA_VARS[v]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)

METRIC = re.compile(r"(?<![:\w])(sockwarden_[a-z_]+)(?![:\w])")
def base(name):
    for suf in ("_bucket", "_sum", "_count"):
        if name.endswith(suf):
            return name[: -len(suf)]
    return name

used = set()
def check_expr(where, expr):
    names = METRIC.findall(expr)
    if re.search(r"\b(?:rate|increase)\(sockwarden_[a-z_]+(?<!_total)(?<!_bucket)[{\[]", expr):
        err(f"{where}: rate() or increase() of a series that is not a counter")
    metrics = set()
    for n in names:
        b = base(n)
        used.add(b)
        if b not in docs:
            err(f"{where}: {b} is not documented in {docs_path}")
        else:
            metrics.add(b)
    allowed = set(TARGET_LABELS)
    for b in metrics:
        allowed |= docs[b]["labels"]
    if "_bucket" in expr:
        allowed.add("le")
        if "histogram_quantile(" not in expr or not re.search(r"by \(le\b", expr):
            err(f"{where}: a _bucket series outside histogram_quantile(..., sum by (le, ...))")
    for m in re.finditer(r"(sockwarden_[a-z_]+)\{([^}]*)\}", expr):
        b = base(m.group(1))
        if b not in docs:
            continue
        for lm in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', m.group(2)):
            label, op, value = lm.groups()
            if label not in docs[b]["labels"] | TARGET_LABELS:
                err(f"{where}: {b} has no label {label} in {docs_path} (it has: {', '.join(sorted(docs[b]['labels'])) or 'none'})")
            elif op in ("=", "!=") and value not in docs[b]["values"] \
                    and not (label == "status" and re.fullmatch(r"[1-5]\d\d", value)):
                err(f"{where}: {b}{{{label}=\"{value}\"}}: {value} is not a value {docs_path} lists")
    if len(metrics) < len({base(n) for n in names}):
        return
    for m in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in filter(None, (l.strip() for l in m.group(1).split(","))):
            if label not in allowed:
                err(f"{where}: grouping by {label}, which none of {', '.join(sorted(metrics))} has in {docs_path}")

# ---- the dashboard: structure (the fields Grafana's dashboard schema requires)
DASH_KEYS = {"id", "uid", "title", "description", "revision", "gnetId", "tags", "timezone", "editable",
             "graphTooltip", "time", "timepicker", "fiscalYearStartMonth", "liveNow", "weekStart", "refresh",
             "schemaVersion", "version", "panels", "templating", "annotations", "links", "snapshot", "preload"}
PANEL_KEYS = {"type", "id", "pluginVersion", "targets", "title", "description", "transparent", "datasource",
              "gridPos", "links", "repeat", "repeatDirection", "maxPerRow", "maxDataPoints", "transformations",
              "interval", "timeFrom", "timeShift", "hideTimeOverride", "timeCompare", "libraryPanel",
              "cacheTimeout", "queryCachingTTL", "options", "fieldConfig"}
ROW_KEYS = {"type", "collapsed", "title", "datasource", "gridPos", "id", "panels", "repeat"}
PANEL_TYPES = {"timeseries", "stat", "state-timeline", "gauge", "bargauge", "table", "text", "heatmap"}
DS_REF = {"type": "prometheus", "uid": "${datasource}"}

for k in sorted(set(dash) - DASH_KEYS):
    err(f"dashboard: unknown top-level field {k}")
for k in ("schemaVersion", "templating", "annotations", "uid", "title", "panels"):
    if k not in dash:
        err(f"dashboard: no {k}")
if not isinstance(dash.get("schemaVersion"), int) or dash.get("schemaVersion", 0) < 39:
    err("dashboard: schemaVersion must be an integer of current Grafana (39 or later)")
if not (isinstance(dash.get("uid"), str) and 8 <= len(dash["uid"]) <= 40):
    err("dashboard: uid must be a string of 8 to 40 characters")
if not isinstance(dash.get("time"), dict) or not {"from", "to"} <= set(dash["time"]):
    err("dashboard: time needs from and to")

variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
for name, v in variables.items():
    if "type" not in v or "name" not in v:
        err(f"templating: variable {name}: type and name are required")
ds = variables.get("datasource", {})
if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    err("templating: no datasource variable of type datasource for prometheus")
pol = variables.get("policy", {})
if pol.get("type") != "query" or not pol.get("multi") or \
        pol.get("definition") != "label_values(sockwarden_http_requests_total, policy)" or \
        pol.get("datasource") != DS_REF:
    err("templating: policy must be a multi-select query variable on label_values(sockwarden_http_requests_total, policy)")
for name, v in variables.items():
    if v.get("type") == "query":
        q = v.get("query")
        q = q if isinstance(q, str) else (q or {}).get("query", "")
        check_expr(f"variable {name}", q)

for a in dash.get("annotations", {}).get("list", []):
    for k in ("name", "enable", "iconColor"):
        if k not in a:
            err(f"annotation {a.get('name')}: no {k}")
    if "expr" in a:
        check_expr(f"annotation {a['name']}", prom(a["expr"]))

ids, boxes, queries = set(), [], []
def grid(where, p):
    g = p.get("gridPos")
    if not isinstance(g, dict) or set(g) - {"h", "w", "x", "y", "static"} or not {"h", "w", "x", "y"} <= set(g):
        err(f"{where}: gridPos needs exactly h, w, x, y")
        return
    if not all(isinstance(g[k], int) for k in "hwxy"):
        err(f"{where}: gridPos values must be integers")
        return
    if not (g["h"] > 0 and 0 < g["w"] <= 24 and 0 <= g["x"] < 24 and g["x"] + g["w"] <= 24 and g["y"] >= 0):
        err(f"{where}: gridPos {g} is outside the 24-column grid")
    for other, og in boxes:
        if g["x"] < og["x"] + og["w"] and og["x"] < g["x"] + g["w"] and g["y"] < og["y"] + og["h"] and og["y"] < g["y"] + g["h"]:
            err(f"{where}: overlaps {other}")
    boxes.append((where, g))

for p in dash.get("panels", []):
    where = f"panel {p.get('id')} {p.get('title')!r}"
    if not isinstance(p.get("id"), int) or p["id"] in ids:
        err(f"{where}: id must be a unique integer")
    ids.add(p.get("id"))
    if not p.get("title"):
        err(f"{where}: no title")
    grid(where, p)
    if p.get("type") == "row":
        for k in sorted(set(p) - ROW_KEYS):
            err(f"{where}: unknown row field {k}")
        if not isinstance(p.get("collapsed"), bool) or not isinstance(p.get("panels"), list):
            err(f"{where}: a row needs collapsed and panels")
        continue
    for k in sorted(set(p) - PANEL_KEYS):
        err(f"{where}: unknown panel field {k}")
    if p.get("type") not in PANEL_TYPES:
        err(f"{where}: type {p.get('type')} is not a core Grafana panel")
    if p.get("datasource") != DS_REF:
        err(f"{where}: datasource must be {DS_REF}")
    fc = p.get("fieldConfig")
    if not isinstance(fc, dict) or set(fc) != {"defaults", "overrides"}:
        err(f"{where}: fieldConfig needs defaults and overrides")
    targets = p.get("targets")
    if not isinstance(targets, list) or not targets:
        err(f"{where}: no targets")
        continue
    refs = [t.get("refId") for t in targets]
    if len(set(refs)) != len(refs) or None in refs:
        err(f"{where}: every target needs its own refId")
    for t in targets:
        if t.get("datasource") != DS_REF or not t.get("expr"):
            err(f"{where} {t.get('refId')}: a target needs the datasource and an expr")
            continue
        e = prom(t["expr"])
        check_expr(f"{where} {t['refId']}", e)
        queries.append({"record": f"dashboard:panel_{p['id']}_{t['refId']}", "expr": e})

for g in rules.get("groups", []):
    for r in g.get("rules", []):
        name = r.get("alert") or r.get("record")
        check_expr(f"rule {name}", r["expr"])
        if "alert" in r:
            if "for" not in r:
                err(f"rule {name}: no for:")
            if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                err(f"rule {name}: severity must be critical, warning or info")
            ann = r.get("annotations", {})
            if not ann.get("summary") or not ann.get("description") or not ann.get("runbook"):
                err(f"rule {name}: needs summary, description and runbook annotations")

yaml.safe_dump({"groups": [{"name": "dashboard", "rules": queries}]}, open(queries_out, "w"), sort_keys=False)

# ---- optionally, Grafana's dashboard JSON Schema
import os
schema_path = os.environ.get("GRAFANA_DASHBOARD_SCHEMA")
if schema_path:
    import jsonschema
    schema = json.load(open(schema_path))
    d = schema["definitions"]
    # Grafana's CUE types these `_` (any value: byName takes a string, a
    # lineWidth a number); the generated JSON Schema says object.
    d["MatcherConfig"]["properties"]["options"] = {}
    d["DynamicConfigValue"]["properties"]["value"] = {}
    for e in jsonschema.Draft7Validator(schema).iter_errors(dash):
        best = jsonschema.exceptions.best_match([e])
        err(f"schema {schema_path}: at {'/'.join(map(str, best.absolute_path))}: {best.message[:300]}")
    print(f"validated against the JSON Schema {schema_path}")

for e in errors:
    print("error:", e, file=sys.stderr)
panel_count = sum(1 for p in dash.get("panels", []) if p.get("type") != "row")
print(f"{panel_count} panels, {len(queries)} queries, {sum(len(g['rules']) for g in rules['groups'])} rules, "
      f"{len(used)} metrics used, {len(docs)} documented; {len(errors)} errors")
sys.exit(1 if errors else 0)
PY

echo "== promtool check rules $rules"
promtool check rules "$rules"

echo "== promtool check rules: the dashboard's queries"
promtool check rules "$scratch/queries.yml"

echo "== promtool test rules $tests"
# The tests say when each alert fires; the annotations are checked by
# `promtool check rules` above (templates), not compared word for word.
python3 - "$rules" "$scratch/sockwarden-alerts.yml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
for g in doc["groups"]:
    for r in g["rules"]:
        r.pop("annotations", None)
yaml.safe_dump(doc, open(sys.argv[2], "w"), sort_keys=False)
PY
cp "$tests" "$scratch/"
(cd "$scratch" && promtool test rules "$(basename "$tests")")

echo "check-dashboards.sh: all checks passed"
