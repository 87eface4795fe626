"""The ValidatingAdmissionPolicy's CEL, evaluated by Google's CEL implementation (cel-cpp, through
cel-expr-python) as the API server evaluates it: each variable in order into `variables`, then
each validation, against Services and their namespaces as the API server passes them."""

from __future__ import annotations

import pytest
from cel_expr_python import cel
from conftest import render_values, with_minimal

EDGES = [{"host": "api.example.com", "prefix": "service.api"},
         {"host": "admin.example.com", "prefix": "service.admin"}]


def policy(**values) -> dict:
    objects = render_values(with_minimal(edges=EDGES, **values))
    found = objects.one("ValidatingAdmissionPolicy")
    binding = objects.one("ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": found["metadata"]["name"], "validationActions": ["Deny"]}
    return found


ENV = cel.NewEnv(variables={"object": cel.Type.DYN, "namespaceObject": cel.Type.DYN, "variables": cel.Type.DYN})


def evaluate(expression: str, data: dict):
    value = ENV.compile(expression).eval(data=data)
    assert value.type() != cel.Type.ERROR, f"{expression!r} failed: {value.value()}"
    return value.plain_value()


def admit(spec: dict, name: str, namespace_labels: dict | None) -> tuple[bool, str | None]:
    """What the API server decides for CREATE of Service `name` in namespace `team`."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}
    if namespace_labels is not None:
        namespace["metadata"]["labels"] = namespace_labels
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "team"},
               "spec": {"ports": [{"name": "http", "port": 80}]}}
    data = {"object": service, "namespaceObject": namespace, "variables": {}}
    for variable in spec["variables"]:
        data["variables"] = {**data["variables"], variable["name"]: evaluate(variable["expression"], data)}
    for validation in spec["validations"]:
        if evaluate(validation["expression"], data) is not True:
            return False, evaluate(validation["messageExpression"], data)
    return True, None


GRANTED = {"kubernetes.io/metadata.name": "team", "gatehouse.dev/publish": "true"}
UNGRANTED = {"kubernetes.io/metadata.name": "team"}


def test_the_policy_covers_service_creation_and_fails_closed():
    spec = policy()["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["services"]}]


@pytest.mark.parametrize("name", ["service-api-foo", "service-api-orders-v2", "service-admin-users"])
def test_a_routed_service_is_allowed_in_a_granted_namespace(name):
    assert admit(policy()["spec"], name, GRANTED) == (True, None)


@pytest.mark.parametrize("labels", [UNGRANTED, {"gatehouse.dev/publish": "false"}, {"gatehouse.dev/publish": "yes"}, {}, None],
                         ids=["not-labelled", "labelled-false", "labelled-yes", "no-labels", "labels-absent"])
@pytest.mark.parametrize("name", ["service-api-foo", "service-admin-users"])
def test_a_routed_service_is_refused_elsewhere(name, labels):
    allowed, message = admit(policy()["spec"], name, labels)
    assert not allowed
    prefix = "service-api-" if name.startswith("service-api-") else "service-admin-"
    assert message == (f"Service {name} would be published by gatehouse (its name starts with {prefix}), and "
                       "namespace team is not labelled gatehouse.dev/publish=true, which the platform team grants")


@pytest.mark.parametrize("name", ["payments", "service-apifoo", "service-api", "api-service-foo", "service-www-foo"])
@pytest.mark.parametrize("labels", [GRANTED, UNGRANTED, None], ids=["granted", "not-granted", "labels-absent"])
def test_a_service_no_edge_routes_is_allowed_anywhere(name, labels):
    assert admit(policy()["spec"], name, labels) == (True, None)


def test_the_grant_label_is_the_platform_teams_choice():
    spec = policy(admission={"grantLabel": "platform.example.com/edge"})["spec"]
    assert admit(spec, "service-api-foo", {"platform.example.com/edge": "true"}) == (True, None)
    allowed, message = admit(spec, "service-api-foo", GRANTED)
    assert not allowed and "platform.example.com/edge=true" in message


def test_the_routed_prefixes_follow_the_edges():
    spec = render_values(with_minimal(edges=[{"host": "shop.example.com", "prefix": "svc.shop.v1"}]))
    found = spec.one("ValidatingAdmissionPolicy")["spec"]
    assert not admit(found, "svc-shop-v1-cart", UNGRANTED)[0]
    assert admit(found, "service-api-foo", UNGRANTED) == (True, None)
