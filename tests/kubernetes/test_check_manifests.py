"""The manifest checks can fail: each takes the real rendered overlay, breaks one thing, and
must name it. Run by scripts/check-k8s (KUBECTL is the kubectl it installed)."""

from __future__ import annotations

import copy
import os
import unittest

import check_manifests as check

OVERLAYS = check.REPO / "deploy" / "kubernetes" / "overlays"


def find(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def container(objects, kind, name):
    return find(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]


def set_env(c, name, value):
    for var in c.setdefault("env", []):
        if var["name"] == name:
            var.clear()
            var.update(name=name, value=value)
            return
    c["env"].append({"name": name, "value": value})


class RenderedOverlays(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        kubectl = os.environ["KUBECTL"]
        cls.rendered = {name: check.render(kubectl, OVERLAYS / name) for name in ("local", "production")}
        cls.readme_vars = check.readme_variables()

    def overlay(self, name="production"):
        return copy.deepcopy(self.rendered[name])

    def violations(self, objects, overlay="production"):
        return check.policy_violations(objects, overlay, self.readme_vars)

    def assert_named(self, objects, text, overlay="production"):
        found = self.violations(objects, overlay)
        self.assertTrue(any(text in v for v in found), f"expected a violation with {text!r}, got {found}")

    def test_the_overlays_as_committed_pass(self):
        for name in ("local", "production"):
            with self.subTest(overlay=name):
                self.assertEqual(check.schema_errors(self.rendered[name]), [])
                self.assertEqual(self.violations(self.rendered[name], name), [])

    def test_an_unknown_field_fails_the_schema(self):
        objects = self.overlay()
        container(objects, "Deployment", "gateway")["readinesProbe"] = {}
        errors = check.schema_errors(objects)
        self.assertTrue(any("Deployment/gateway" in e and "readinesProbe" in e for e in errors), errors)

    def test_a_wrong_type_fails_the_schema(self):
        objects = self.overlay()
        find(objects, "Deployment", "worker")["spec"]["replicas"] = "three"
        self.assertTrue(any("Deployment/worker" in e for e in check.schema_errors(objects)))

    def test_an_unknown_kind_fails(self):
        objects = self.overlay()
        objects.append({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
        self.assertTrue(any("no schema" in e for e in check.schema_errors(objects)))

    def test_a_missing_probe(self):
        for kind, name in (("Deployment", "gateway"), ("DaemonSet", "otel-agent"), ("Deployment", "jaeger")):
            with self.subTest(workload=name):
                objects = self.overlay()
                del container(objects, kind, name)["livenessProbe"]
                self.assert_named(objects, f"{kind}/{name} container")

    def test_a_probe_on_an_undeclared_port(self):
        objects = self.overlay()
        container(objects, "Deployment", "worker")["readinessProbe"]["httpGet"]["port"] = "admin"
        self.assert_named(objects, "readinessProbe port 'admin'")

    def test_a_missing_limit_and_a_request_above_its_limit(self):
        objects = self.overlay()
        del container(objects, "Deployment", "order-service")["resources"]["limits"]["memory"]
        self.assert_named(objects, "no resources.limits.memory")
        objects = self.overlay()
        container(objects, "Deployment", "gateway")["resources"]["requests"]["cpu"] = "1500m"
        self.assert_named(objects, "cpu request 1500m above its limit")

    def test_the_security_context(self):
        cases = [
            (lambda c, p: c["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
            (lambda c, p: c["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
            (lambda c, p: c["securityContext"]["capabilities"].update(drop=["NET_RAW"]), "drop ALL"),
            (lambda c, p: p["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
            (lambda c, p: p["securityContext"].pop("seccompProfile"), "seccompProfile"),
            (lambda c, p: p.update(hostNetwork=True), "hostNetwork"),
        ]
        for breaks, text in cases:
            with self.subTest(text=text):
                objects = self.overlay()
                pod = find(objects, "Deployment", "otel-gateway")["spec"]["template"]["spec"]
                breaks(pod["containers"][0], pod)
                self.assert_named(objects, text)

    def test_a_deployment_without_a_disruption_budget(self):
        objects = [o for o in self.overlay() if not (o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"] == "worker")]
        self.assert_named(objects, "Deployment/worker: no PodDisruptionBudget")

    def test_sqlite_means_one_replica(self):
        # The local overlay keeps the order-service on SQLite (production puts it on PostgreSQL).
        objects = self.overlay("local")
        find(objects, "Deployment", "order-service")["spec"]["replicas"] = 2
        self.assert_named(objects, "Deployment/order-service: owns the ReadWriteOnce volume order-service-data, so one replica", "local")
        objects = self.overlay()
        find(objects, "Deployment", "jaeger")["spec"]["strategy"] = {"type": "RollingUpdate"}
        self.assert_named(objects, "strategy must be Recreate")

    def test_workers_beyond_the_partitions(self):
        objects = self.overlay()
        find(objects, "HorizontalPodAutoscaler", "worker")["spec"]["maxReplicas"] = 7
        self.assert_named(objects, "maxReplicas 7 exceeds the topic's 6 partitions")
        objects = self.overlay("local")
        find(objects, "KafkaTopic", "orders")["spec"]["partitions"] = 6
        self.assert_named(objects, "KafkaTopic/orders: 6 partitions, but KAFKA_TOPIC_PARTITIONS is 3", "local")

    def test_collector_memory_limiter_below_the_container_limit(self):
        objects = self.overlay()
        set_env(container(objects, "Deployment", "otel-gateway"), "COLLECTOR_MEMORY_LIMIT_MIB", "1024")
        self.assert_named(objects, "COLLECTOR_MEMORY_LIMIT_MIB=1024 is not below the memory limit 1Gi")

    def test_images_at_the_pinned_versions(self):
        objects = self.overlay()
        container(objects, "DaemonSet", "otel-agent")["image"] = "otel/opentelemetry-collector-contrib:0.160.0"
        self.assert_named(objects, "but .env pins otel/opentelemetry-collector-contrib:")
        objects = self.overlay()
        container(objects, "Deployment", "jaeger")["image"] = "jaegertracing/jaeger:2.1.0"
        self.assert_named(objects, "but .env pins jaegertracing/jaeger:")

    def test_a_config_file_that_is_not_mounted(self):
        objects = self.overlay()
        agent = container(objects, "DaemonSet", "otel-agent")
        agent["args"] = [a.replace("agent-resolver-dns.yaml", "agent-resolver-static.yaml") for a in agent["args"]]
        self.assert_named(objects, "has no key agent-resolver-static.yaml")
        objects = self.overlay()
        container(objects, "Deployment", "jaeger")["args"] = ["--config=/etc/otelcol/config.yaml"]
        self.assert_named(objects, "no ConfigMap is mounted at /etc/otelcol")

    def test_a_variable_no_service_reads(self):
        objects = self.overlay()
        set_env(container(objects, "Deployment", "worker"), "KAFKA_GROUP", "worker")
        self.assert_named(objects, "Deployment/worker: sets KAFKA_GROUP, which is not in the README")

    def test_the_public_edge(self):
        objects = self.overlay()
        set_env(container(objects, "Deployment", "gateway"), "INBOUND_TRACE_CONTEXT", "continue")
        self.assert_named(objects, "INBOUND_TRACE_CONTEXT=continue, a public edge needs restart")
        objects = self.overlay()
        set_env(container(objects, "Deployment", "worker"), "FAULT_INJECTION", "baggage")
        self.assert_named(objects, "FAULT_INJECTION=baggage at a public edge")
        # The local overlay is no public edge: faults in baggage are its demo.
        self.assertEqual(self.violations(self.overlay("local"), "local"), [])
        objects = self.overlay("local")
        set_env(container(objects, "Deployment", "gateway"), "W3C_TEST_ENDPOINT", "true")
        self.assert_named(objects, "W3C_TEST_ENDPOINT=true", "local")

    def test_the_production_overlay_is_a_public_edge_in_its_rendering(self):
        gateway = container(self.rendered["production"], "Deployment", "gateway")
        self.assertEqual(check.env_value(gateway, "INBOUND_TRACE_CONTEXT", {}), "restart")
        local = container(self.rendered["local"], "Deployment", "gateway")
        self.assertEqual(check.env_value(local, "INBOUND_TRACE_CONTEXT", {}), "continue")

    def test_a_service_selecting_nothing_and_an_autoscaler_without_target(self):
        objects = self.overlay()
        find(objects, "Service", "order-service")["spec"]["selector"] = {"app.kubernetes.io/name": "orders"}
        self.assert_named(objects, "Service/order-service: selects no pods")
        objects = self.overlay()
        find(objects, "HorizontalPodAutoscaler", "gateway")["spec"]["scaleTargetRef"]["name"] = "edge"
        self.assert_named(objects, "which does not exist")


if __name__ == "__main__":
    unittest.main()
