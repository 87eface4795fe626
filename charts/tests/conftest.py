"""Renders charts/gatehouse through Helm's Go SDK for the tests (charts/chart.py's render)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import chart  # noqa: E402  (charts/chart.py)

# The README's install: the two values a user gives.
MINIMAL = {"image": {"repository": "registry.example.com/gatehouse"}, "clusterName": "prod"}


class Render(list):
    """The rendered objects, with lookups by kind and name."""

    def all(self, kind: str) -> list[dict]:
        return [d for d in self if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def container(self, kind: str) -> dict:
        return self.one(kind)["spec"]["template"]["spec"]["containers"][0]


def render_values(values: dict, namespace: str = "gatehouse") -> Render:
    text = chart.render(values, name="gatehouse", namespace=namespace)
    return Render(d for d in yaml.safe_load_all(text) if d)


def with_minimal(**overrides) -> dict:
    return chart.merge(MINIMAL, overrides)


@pytest.fixture
def render():
    return lambda values=None, **kw: render_values(MINIMAL if values is None else values, **kw)
