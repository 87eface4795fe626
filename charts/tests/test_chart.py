"""The chart's behaviour, value by value, on renders by Helm's own Go SDK."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import chart
import helm_python as helm
import pytest
import yaml
from conftest import MINIMAL, render_values, with_minimal

# The module's handshake from a real apply: terraform/examples/local on MiniStack.
HANDSHAKE = (Path(__file__).resolve().parents[1] / "gatehouse" / "ci" / "local-handshake.json").read_text()


def refusal(values: dict) -> str:
    with pytest.raises(helm.HelmError) as error:
        render_values(values)
    return str(error.value)


def test_the_readme_install_needs_only_the_image_and_the_cluster_name(render):
    objects = render()
    provisioner = objects.container("Deployment")
    assert "--cluster=prod" in provisioner["args"]
    assert not any(a.startswith("--handshake") for a in provisioner["args"])
    assert objects.container("DaemonSet")["image"] == "registry.example.com/gatehouse:0.1.0"
    assert not [c for c in objects.all("ConfigMap") if c["metadata"]["name"].endswith("-handshake")]


def test_a_region_reaches_the_provisioner_and_is_checked():
    env = render_values(with_minimal(region="eu-west-1")).container("Deployment")["env"]
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in env
    assert not [e for e in render_values(MINIMAL).container("Deployment")["env"] if e["name"] == "AWS_REGION"]
    assert "region" in refusal(with_minimal(region="Ireland"))


def test_an_image_digest_pins_the_image():
    digest = "sha256:" + "ab" * 32
    objects = render_values(with_minimal(image={"digest": digest}))
    assert objects.container("DaemonSet")["image"] == f"registry.example.com/gatehouse:0.1.0@{digest}"


def test_a_missing_image_repository_is_refused_saying_what_to_set():
    message = refusal({"clusterName": "prod"})
    assert "image.repository is required" in message and "docker build -t" in message


def test_a_cluster_name_and_a_handshake_together_are_refused():
    assert "not both" in refusal(with_minimal(handshake=HANDSHAKE))


def test_neither_a_cluster_name_nor_a_handshake_is_refused():
    message = refusal({"image": {"repository": "r.example/gatehouse"}})
    assert "clusterName" in message and "--set-file handshake=handshake.json" in message


def test_a_handshake_given_as_a_file_is_mounted_for_the_provisioner():
    values = {"image": {"repository": "r.example/gatehouse"}}
    values = chart.merge(values, helm.parse_set_file(
        f"handshake={Path(__file__).resolve().parents[1] / 'gatehouse/ci/local-handshake.json'}"))
    objects = render_values(values)
    config_map = objects.one("ConfigMap", "gatehouse-provisioner-handshake")
    assert json.loads(config_map["data"]["handshake.json"]) == json.loads(HANDSHAKE)
    provisioner = objects.container("Deployment")
    assert "--handshake=/etc/gatehouse/handshake.json" in provisioner["args"]
    assert not any(a.startswith("--cluster") for a in provisioner["args"])
    assert provisioner["volumeMounts"] == [{"name": "handshake", "mountPath": "/etc/gatehouse", "readOnly": True}]
    volumes = objects.one("Deployment")["spec"]["template"]["spec"]["volumes"]
    assert volumes[0]["configMap"]["name"] == "gatehouse-provisioner-handshake"


def test_a_handshake_given_as_a_map_in_a_values_file_becomes_the_same_json():
    objects = render_values({"image": {"repository": "r.example/gatehouse"}, "handshake": json.loads(HANDSHAKE)})
    config_map = objects.one("ConfigMap", "gatehouse-provisioner-handshake")
    assert json.loads(config_map["data"]["handshake.json"]) == json.loads(HANDSHAKE)


def test_a_handshake_that_is_not_json_is_refused():
    message = refusal({"image": {"repository": "r.example/gatehouse"}, "handshake": "target_group_arn = arn:..."})
    assert "handshake is not JSON" in message


def test_a_new_handshake_restarts_the_provisioner():
    def annotation(handshake: dict) -> str:
        objects = render_values({"image": {"repository": "r.example/gatehouse"}, "handshake": handshake})
        return objects.one("Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/target"]
    first = json.loads(HANDSHAKE)
    assert annotation(first) == annotation(dict(first))
    assert annotation(first) != annotation({**first, "node_port": 31000})


def test_the_proxy_may_read_exactly_the_watched_namespaces_and_nothing_cluster_wide():
    objects = render_values(with_minimal(namespaces=["team-a", "team-b"]))
    roles = objects.all("Role")
    proxy_roles = sorted(r["metadata"]["namespace"] for r in roles if r["metadata"]["name"] == "gatehouse-proxy")
    assert proxy_roles == ["team-a", "team-b"]
    for role in roles:
        if role["metadata"]["name"] == "gatehouse-proxy":
            assert role["rules"] == [
                {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
            ]
    bindings = [b for b in objects.all("RoleBinding") if b["metadata"]["name"] == "gatehouse-proxy"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gatehouse-proxy", "namespace": "gatehouse"}]
    cluster_subjects = [s["name"] for b in objects.all("ClusterRoleBinding") for s in b["subjects"]]
    assert cluster_subjects == ["gatehouse-provisioner"]


def test_the_provisioner_reads_nodes_cluster_wide_and_the_rest_only_in_its_namespace(render):
    objects = render()
    assert objects.one("ClusterRole")["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    role = objects.one("Role", "gatehouse-provisioner")
    assert role["metadata"]["namespace"] == "gatehouse"
    grants = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    for resource, group in (("endpointslices", "discovery.k8s.io"), ("pods", "")):
        assert {(group, resource, v) for v in ("get", "list", "watch")} <= grants
    assert ("", "pods/status", "patch") in grants
    assert ("coordination.k8s.io", "leases", "create") in grants
    lease = next(r for r in role["rules"] if r.get("resourceNames") and r["resources"] == ["leases"])
    assert lease["resourceNames"] == ["gatehouse-provisioner"] and lease["verbs"] == ["get", "update", "patch"]
    assert "--lease-name=gatehouse-provisioner" in objects.container("Deployment")["args"]
    assert "--proxy-service=gatehouse/gatehouse-proxy" in objects.container("Deployment")["args"]


def test_the_irsa_role_annotates_the_provisioners_service_account():
    arn = "arn:aws:iam::123456789012:role/gatehouse-provisioner"
    objects = render_values(with_minimal(provisioner={"serviceAccount": {"roleArn": arn}}))
    account = objects.one("ServiceAccount", "gatehouse-provisioner")
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": arn}
    assert "annotations" not in render_values(MINIMAL).one("ServiceAccount", "gatehouse-provisioner")["metadata"]


@pytest.mark.parametrize("family, listen", [("IPv4", "$(POD_IP):9901"), ("IPv6", "[$(POD_IP)]:9901")])
def test_the_admin_listener_binds_the_pod_ip(family, listen):
    objects = render_values(with_minimal(proxy={"ipFamily": family}))
    proxy = objects.container("DaemonSet")
    assert f"--admin-listen={listen}" in proxy["args"]
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in proxy["env"]
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_status(url: str) -> int | str:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError as error:
        return type(error).__name__


def test_the_kubelets_probes_reach_the_proxy_on_the_pod_ip_and_nothing_else_does(tmp_path):
    """The rendered container run as the kubelet runs it: $(POD_IP) expanded to the pod's IP
    (127.0.0.2 here), then the probes' httpGet against that IP and the named ports."""
    pod_ip = "127.0.0.2"
    traffic, admin = free_port(pod_ip), free_port(pod_ip)
    objects = render_values(with_minimal(proxy={"port": traffic, "adminPort": admin}))
    config = yaml.safe_load(objects.one("ConfigMap", "gatehouse-proxy")["data"]["gatehouse-proxy.yaml"])
    # The one change: static discovery, as there is no API server here.
    config["discovery"] = {"static": {"service.api.demo": []}}
    (tmp_path / "gatehouse-proxy.yaml").write_text(yaml.safe_dump(config))
    container = objects.container("DaemonSet")
    args = [a.replace("$(POD_IP)", pod_ip).replace("/etc/gatehouse", str(tmp_path)) for a in container["args"]]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    process = subprocess.Popen([os.environ["GATEHOUSE_PROXY_BIN"], *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on" in process.stderr.readline()
        liveness, readiness = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
        deadline = time.monotonic() + 5
        while http_status(f"http://{pod_ip}:{ports[liveness['port']]}{liveness['path']}") != 200:
            assert time.monotonic() < deadline, "the liveness probe never got 200"
            time.sleep(0.05)
        assert http_status(f"http://{pod_ip}:{ports[readiness['port']]}{readiness['path']}") == 200
        # Bound to the pod IP alone: another address of the pod (here 127.0.0.1) gets nothing.
        assert http_status(f"http://127.0.0.1:{admin}/routes") == "URLError"
        assert http_status(f"http://{pod_ip}:{admin}/routes") == 200
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_a_config_change_rolls_the_proxies_and_nothing_else_does():
    def checksum(values: dict) -> str:
        return render_values(values).one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    base = checksum(MINIMAL)
    assert checksum(with_minimal(edges=[{"host": "www.example.com", "prefix": "service.www"}])) != base
    assert checksum(with_minimal(proxy={"timeouts": {"drain": "25s"}})) != base
    assert checksum(with_minimal(namespaces=["default", "team-a"])) != base
    assert checksum(with_minimal(provisioner={"replicas": 3})) == base


def test_the_readiness_gate_is_declared_unless_turned_off(render):
    gates = render().one("DaemonSet")["spec"]["template"]["spec"]["readinessGates"]
    assert gates == [{"conditionType": "gatehouse.dev/target-healthy"}]
    spec = render_values(with_minimal(proxy={"readinessGate": False})).one("DaemonSet")["spec"]["template"]["spec"]
    assert "readinessGates" not in spec


def test_the_node_port_is_pinned_and_traffic_stays_on_its_node():
    service = render_values(with_minimal(nodePort=31234)).one("Service", "gatehouse-proxy")
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 31234, "protocol": "TCP"}]
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    # A proxy must be reachable through the NodePort before it is Ready: its gate waits for it.
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_the_network_policy_opens_the_traffic_port_to_all_and_the_admin_port_only_to_the_scraper(render):
    policy = render().one("NetworkPolicy", "gatehouse-proxy")
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    assert render().one("NetworkPolicy", "gatehouse-provisioner")["spec"]["ingress"] == []
    scraper = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    objects = render_values(with_minimal(networkPolicy={"metricsFrom": scraper}))
    assert objects.one("NetworkPolicy", "gatehouse-proxy")["spec"]["ingress"] == [
        {"ports": [{"port": "http", "protocol": "TCP"}]},
        {"from": scraper, "ports": [{"port": "admin", "protocol": "TCP"}]},
    ]
    assert objects.one("NetworkPolicy", "gatehouse-provisioner")["spec"]["ingress"] == [
        {"from": scraper, "ports": [{"port": "metrics", "protocol": "TCP"}]}]
    assert not render_values(with_minimal(networkPolicy={"enabled": False})).all("NetworkPolicy")


def test_a_service_monitor_only_when_asked_and_it_selects_a_service_with_its_port(render):
    assert not render().all("ServiceMonitor")
    objects = render_values(with_minimal(serviceMonitor={"enabled": True, "labels": {"release": "prom"}}))
    monitors = objects.all("ServiceMonitor")
    assert len(monitors) == 2
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "prom"
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in objects.all("Service") if selector.items() <= s["metadata"]["labels"].items()]
        assert len(services) == 1 and services[0]["spec"]["clusterIP"] == "None"
        port = monitor["spec"]["endpoints"][0]["port"]
        assert port in [p["name"] for p in services[0]["spec"]["ports"]]
        pods = next(d for d in objects if d["kind"] in ("DaemonSet", "Deployment")
                    and d["spec"]["selector"]["matchLabels"].items() <= services[0]["spec"]["selector"].items())
        assert port in [p["name"] for p in pods["spec"]["template"]["spec"]["containers"][0]["ports"]]


def test_pod_disruption_budgets_keep_one_proxy_at_a_time_and_a_provisioner(render):
    assert render().one("PodDisruptionBudget", "gatehouse-proxy")["spec"]["maxUnavailable"] == 1
    assert render().one("PodDisruptionBudget", "gatehouse-provisioner")["spec"]["minAvailable"] == 1
    single = render_values(with_minimal(provisioner={"replicas": 1}))
    assert [p["metadata"]["name"] for p in single.all("PodDisruptionBudget")] == ["gatehouse-proxy"]


def test_a_termination_grace_within_the_drain_hook_drain_and_shutdown_is_refused():
    message = refusal(with_minimal(proxy={"terminationGracePeriodSeconds": 75}))
    assert "must exceed the drain hook's timeout + drain + shutdown (75 s)" in message
    # Without the gate there is no hook to wait for.
    message = refusal(with_minimal(proxy={"terminationGracePeriodSeconds": 45, "readinessGate": False}))
    assert "must exceed drain + shutdown (45 s)" in message
    render_values(with_minimal(proxy={"terminationGracePeriodSeconds": 60, "readinessGate": False}))


def test_the_drain_hook_holds_a_terminating_proxy_and_may_read_only_pods_of_its_namespace(render):
    objects = render()
    proxy = objects.container("DaemonSet")
    assert proxy["lifecycle"]["preStop"]["exec"]["command"] == [
        "/usr/local/bin/gatehouse-provisioner", "drain-hook", "--timeout=30s"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in proxy["env"]}
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"
    role = objects.one("Role", "gatehouse-proxy-drain-hook")
    assert role["metadata"]["namespace"] == "gatehouse"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    binding = objects.one("RoleBinding", "gatehouse-proxy-drain-hook")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gatehouse-proxy", "namespace": "gatehouse"}]
    # Without the readiness gate there is no condition to wait for: no hook, no grant.
    objects = render_values(with_minimal(proxy={"readinessGate": False}))
    assert "lifecycle" not in objects.container("DaemonSet")
    assert not [r for r in objects.all("Role") if r["metadata"]["name"] == "gatehouse-proxy-drain-hook"]


def test_a_default_edge_that_is_no_edge_is_refused():
    assert 'defaultEdge "www.example.com" is none of' in refusal(with_minimal(defaultEdge="www.example.com"))


def test_a_misspelt_value_is_refused_by_name():
    assert "timeout" in refusal(with_minimal(proxy={"timeout": {"drain": "20s"}}))


def test_scheduling_and_resources_reach_the_pods():
    objects = render_values(with_minimal(proxy={
        "priorityClassName": "system-node-critical", "tolerations": [{"operator": "Exists"}],
        "nodeSelector": {"role": "edge"}, "resources": {"requests": {"cpu": "1"}}}))
    spec = objects.one("DaemonSet")["spec"]["template"]["spec"]
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["nodeSelector"] == {"role": "edge"}
    assert spec["containers"][0]["resources"]["requests"]["cpu"] == "1"


def module_default(name: str) -> str:
    """A variable's default in the Terraform module (terraform/modules/edge-ingress)."""
    variables = (Path(__file__).resolve().parents[2] / "terraform/modules/edge-ingress/variables.tf").read_text()
    block = re.search(rf'variable "{name}" {{(.*?)\n}}', variables, re.S)
    assert block, f"no variable {name} in the module"
    return re.search(r"^\s*default\s*=\s*(.+)$", block.group(1), re.M).group(1).strip().strip('"')


def test_the_defaults_agree_with_the_terraform_modules(render):
    objects = render()
    assert objects.one("Service", "gatehouse-proxy")["spec"]["ports"][0]["nodePort"] == int(module_default("node_port"))
    assert objects.container("DaemonSet")["readinessProbe"]["httpGet"]["path"] == module_default("health_check_path")
    # The ALB must see a draining proxy unhealthy well inside its drain.
    config = yaml.safe_load(objects.one("ConfigMap", "gatehouse-proxy")["data"]["gatehouse-proxy.yaml"])
    unhealthy_after = int(module_default("health_check_interval")) * int(module_default("unhealthy_threshold"))
    assert int(config["timeouts"]["drain"].removesuffix("s")) >= 2 * unhealthy_after
    # The drain hook waits as long as the ALB may drain a deregistered target.
    hook = objects.container("DaemonSet")["lifecycle"]["preStop"]["exec"]["command"]
    assert f"--timeout={module_default('deregistration_delay')}s" in hook
