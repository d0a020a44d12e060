"""Render and lint deploy/helm/regferry with Helm's own Go SDK (through
helm-python-sdk's libhelm_c; no helm binary or cluster needed), for the
Rust test `helm_chart_renders_...` in operations.rs.

Usage: helm_render.py CHART_DIR OUT_DIR. Writes one file per rendered
template under OUT_DIR, and OUT_DIR/report.json with the strict lint report
and the errors of renders that must fail.
"""
import json
import os
import sys

from helm_python.chart import Chart, lint

chart_dir, out_dir = sys.argv[1], sys.argv[2]
values = {
    "image": {"repository": "registry.example.com/regferry"},
    "policies": {"p.yaml": "name: p\nsource: { registry: https://a.example.com }\ndestinations:\n  - registry: https://b.example.com\n"},
    "credentials": {"dockerConfigJson": "{\"auths\": {}}", "envFromSecret": "regferry-env"},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
}
chart = Chart.load(chart_dir)
report = {"lint": lint(chart_dir, values, strict=True), "must_fail": {}}
for name, files in chart.render(values, name="rf", namespace="ops", is_install=True).items():
    path = os.path.join(out_dir, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(files)
# PostgreSQL state: three pods sharing the passes.
shared = {**values, "state": {"postgres": {"existingSecret": "regferry-state"}, "leaseTime": "20s"}, "replicas": 3}
for name, files in chart.render(shared, name="rf", namespace="ops", is_install=True).items():
    path = os.path.join(out_dir, "postgres", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(files)
# GitOps: tokens from a Secret the user manages, files a policy needs
# mounted, more environment, a ServiceAccount for workload identity —
# rendered twice, as `helm template` would on every sync.
extras = {**values, "api": {"existingSecret": "regferry-tokens", "publicStatus": False},
          "extraVolumes": [{"name": "registry-ca", "configMap": {"name": "registry-ca"}},
                           {"name": "registry-client", "secret": {"secretName": "registry-client-cert"}}],
          "extraVolumeMounts": [{"name": "registry-ca", "mountPath": "/etc/regferry/ca", "readOnly": True},
                                {"name": "registry-client", "mountPath": "/etc/regferry/client", "readOnly": True}],
          "extraEnv": [{"name": "AWS_REGION", "value": "eu-west-1"},
                       {"name": "HARBOR_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "harbor-robot", "key": "password"}}}],
          "serviceAccount": {"create": True, "name": "", "automountToken": False,
                             "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/regferry"}}}
renders = [chart.render(extras, name="rf", namespace="ops", is_install=False) for _ in range(2)]
report["extras_stable"] = renders[0] == renders[1]
report["extras_lint"] = lint(chart_dir, extras, strict=True)
for name, files in renders[0].items():
    path = os.path.join(out_dir, "extras", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(files)
# The chart's own random tokens differ between two renders (why existingSecret is the GitOps way).
report["generated_stable"] = chart.render(values, name="rf", namespace="ops", is_install=False) == chart.render(values, name="rf", namespace="ops", is_install=False)
for case, broken in [("no image", {**values, "image": {"repository": ""}}), ("no policies", {**values, "policies": {}}),
                     ("replicas on SQLite", {**values, "replicas": 2})]:
    try:
        chart.render(broken, name="rf", namespace="ops", is_install=True)
        report["must_fail"][case] = None
    except Exception as e:  # the SDK's HelmRenderError
        report["must_fail"][case] = str(e)
with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
