"""Renders and lints charts/gatehouse with Helm's own Go SDK (helm-python-sdk), no helm binary.

    chart.py render [-n NS] [--name NAME] [-f FILE]... [--set K=V]... [--set-file K=PATH]...
        prints the manifests, as `helm template` would (the same values precedence);
    chart.py check --out DIR
        lints and renders every value set below into DIR/<set>/manifests.yaml, with the
        proxy's configuration beside it (DIR/<set>/gatehouse-proxy.yaml), for charts/check
        to validate.

Bad values get Helm's own message (the values schema, or the chart's `fail`), one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "gatehouse"

# The value sets every run renders and validates: the chart's ci/ sets and the kind e2e's.
VALUE_SETS = {
    "minimal": {"files": ["charts/gatehouse/ci/minimal-values.yaml"]},
    "full": {"files": ["charts/gatehouse/ci/full-values.yaml"],
             "set_files": ["handshake=charts/gatehouse/ci/eks-handshake.json"]},
    "ipv6": {"files": ["charts/gatehouse/ci/ipv6-values.yaml"]},
    # local-handshake.json: `terraform output -json gatehouse` of terraform/examples/local applied
    # to MiniStack, as tests/kind/run.sh gives it.
    "kind": {"files": ["tests/kind/values.yaml"],
             "set_files": ["handshake=charts/gatehouse/ci/local-handshake.json"]},
}
RELEASE = {"name": "gatehouse", "namespace": "gatehouse"}


def merge(base: dict, override: dict) -> dict:
    """Helm's merge of values sources: maps merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def user_values(files: list[str], sets: list[str], set_files: list[str]) -> dict:
    """The values a user gives, in helm's order: -f files, then --set, then --set-file."""
    values: dict = {}
    for file in files:
        values = merge(values, helm.values_from_yaml((ROOT / file).read_text()) or {})
    for expression in sets:
        values = merge(values, helm.parse_set_string(expression))
    for expression in set_files:
        key, _, path = expression.partition("=")
        values = merge(values, helm.parse_set_file(f"{key}={ROOT / path}"))
    return values


_loaded: list[helm.Chart] = []


def loaded_chart() -> helm.Chart:
    """The chart, loaded once per process (charts are immutable)."""
    if not _loaded:
        _loaded.append(helm.Chart.load(CHART))
    return _loaded[0]


def render(values: dict, name: str, namespace: str) -> str:
    """The chart's manifests for these values, one YAML stream (empty templates left out)."""
    chart = loaded_chart()
    chart.validate_schema(chart.merge_values(values))
    rendered = chart.render(values=values, name=name, namespace=namespace, is_install=True)
    documents = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt") or not any(yaml.safe_load_all(text)):
            continue
        documents.append(f"# Source: {template}\n{text.strip()}\n")
    return "---\n".join(documents)


def proxy_config(manifests: str) -> str:
    """The proxy's configuration file inside the rendered ConfigMap."""
    for document in yaml.safe_load_all(manifests):
        if document and document["kind"] == "ConfigMap" and "gatehouse-proxy.yaml" in document["data"]:
            return document["data"]["gatehouse-proxy.yaml"]
    raise SystemExit("chart.py: the render has no ConfigMap with gatehouse-proxy.yaml")


def lint(values: dict, namespace: str) -> list[str]:
    """Helm lint's findings (strict: warnings count), one line each."""
    report = helm.lint(CHART, values, strict=True, namespace=namespace)
    return [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2] + report["errors"]


def check(out: Path) -> int:
    failures = 0
    for name, spec in VALUE_SETS.items():
        values = user_values(spec.get("files", []), spec.get("sets", []), spec.get("set_files", []))
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        try:
            manifests = render(values, **RELEASE)
        except helm.HelmError as error:
            print(f"chart.py: value set {name}: {error}", file=sys.stderr)
            failures += 1
            continue
        (folder / "manifests.yaml").write_text(manifests)
        (folder / "gatehouse-proxy.yaml").write_text(proxy_config(manifests))
        findings = lint(values, RELEASE["namespace"])
        for finding in findings:
            print(f"chart.py: value set {name}: helm lint: {finding}", file=sys.stderr)
        failures += bool(findings)
        kinds = [d["kind"] for d in yaml.safe_load_all(manifests) if d]
        print(f"chart.py: {name}: {len(kinds)} objects ({', '.join(sorted(set(kinds)))}); helm lint --strict clean"
              if not findings else f"chart.py: {name}: helm lint failed")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Render or check charts/gatehouse without a helm binary.")
    commands = parser.add_subparsers(dest="command", required=True)
    render_command = commands.add_parser("render", help="print the manifests, as `helm template` does")
    render_command.add_argument("-n", "--namespace", default="default")
    render_command.add_argument("--name", default="gatehouse", help="the release name")
    render_command.add_argument("-f", "--values", action="append", default=[], metavar="FILE")
    render_command.add_argument("--set", action="append", default=[], metavar="K=V")
    render_command.add_argument("--set-file", action="append", default=[], metavar="K=PATH")
    check_command = commands.add_parser("check", help="lint and render every value set into --out")
    check_command.add_argument("--out", type=Path, required=True)
    options = parser.parse_args()
    if options.command == "check":
        return check(options.out)
    try:
        values = user_values([str(Path(f).resolve()) for f in options.values], options.set,
                             [f"{k}={Path(p).resolve()}" for k, _, p in (s.partition("=") for s in options.set_file)])
        sys.stdout.write(render(values, options.name, options.namespace))
    except (helm.HelmError, OSError) as error:
        print(f"chart.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
