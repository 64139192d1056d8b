"""The k8s backend's pure parts: object builders, status reading, error sentences."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from cli_server.sandboxes import k8s_objects as objects
from cli_server.sandboxes.k8s_backend import readable

POD = objects.PodSettings("img", "http://cli:8080/proxy/anthropic/v1", {"limits": {"cpu": "1"}})


class BuilderTests(SynchronousTestCase):
    def test_quantity(self) -> None:
        self.assertEqual(objects.quantity(10 * 1024**3), "10Gi")
        self.assertEqual(objects.quantity(512 * 1024**2), "512Mi")
        self.assertEqual(objects.quantity(3 * 1024**4), "3Ti")
        self.assertEqual(objects.quantity(1000), "1000")

    def test_versions(self) -> None:
        """v1beta1 runs and pauses with operatingMode; v1alpha1 with replicas."""
        beta = objects.sandbox("v1beta1", "i", "s", "w", POD)
        alpha = objects.sandbox("v1alpha1", "i", "s", "w", POD)
        self.assertEqual(beta["spec"]["operatingMode"], "Running")
        self.assertEqual(alpha["spec"]["replicas"], 1)
        # agent-sandbox 0.5 makes the (headless) Service, and so serviceFQDN, only if asked
        self.assertIs(beta["spec"]["service"], True)
        self.assertIs(alpha["spec"]["service"], True)
        self.assertEqual(
            objects.running_patch("v1beta1", False), {"spec": {"operatingMode": "Suspended"}}
        )
        self.assertEqual(objects.running_patch("v1alpha1", False), {"spec": {"replicas": 0}})
        self.assertTrue(objects.suspended({"spec": {"replicas": 0}}))
        self.assertTrue(objects.suspended({"spec": {"operatingMode": "Suspended"}}))
        self.assertFalse(objects.suspended(beta))
        self.assertFalse(objects.suspended(alpha))

    def test_no_runtime_class_unless_asked(self) -> None:
        self.assertNotIn("runtimeClassName", objects.pod_template("i", "s", "w", POD)["spec"])

    def test_secrets_only_by_reference(self) -> None:
        secret = objects.secret("i", "s", "w", "the-password", "the-token")
        body = json.dumps(objects.sandbox("v1beta1", "i", "s", "w", POD))
        self.assertEqual(secret["stringData"]["opencode-password"], "the-password")
        self.assertNotIn("the-password", body)
        self.assertNotIn("the-token", body)

    def test_ours(self) -> None:
        self.assertTrue(objects.ours(objects.home("i", "s", "w", POD), "i"))
        self.assertFalse(objects.ours(objects.home("i", "s", "w", POD), "j"))
        self.assertFalse(objects.ours({"metadata": {}}, "i"))


class StatusTests(SynchronousTestCase):
    def test_address(self) -> None:
        """The Service's name first, else the pod's first address."""
        both = {"status": {"serviceFQDN": "x.ns.svc.cluster.local", "podIPs": ["10.0.0.1"]}}
        self.assertEqual(objects.address(both), "x.ns.svc.cluster.local")
        self.assertEqual(objects.address({"status": {"podIPs": ["10.0.0.1"]}}), "10.0.0.1")
        self.assertIsNone(objects.address({}))
        self.assertEqual(objects.service_name(both), "x.ns.svc.cluster.local")
        self.assertIsNone(objects.service_name({"status": {"serviceFQDN": ""}}))
        self.assertEqual(objects.pod_addresses(both), ["10.0.0.1"])
        self.assertEqual(objects.pod_addresses({"status": {"podIPs": None}}), [])

    def test_not_ready_reason(self) -> None:
        condition = {"type": "Ready", "status": "False", "reason": "R", "message": "m"}
        self.assertEqual(
            objects.not_ready_reason({"status": {"conditions": [condition]}}, []), "R: m"
        )
        events = [
            {"type": "Normal", "reason": "Scheduled", "message": "ok"},
            {"type": "Warning", "reason": "Failed", "message": "pull"},
            {"type": "Normal", "reason": "Pulling", "message": "again"},
        ]
        self.assertEqual(objects.not_ready_reason(None, events), "Failed: pull")
        self.assertEqual(objects.not_ready_reason({}, []), "no reason given by the cluster")


class ReadableErrorTests(SynchronousTestCase):
    def test_api_statuses(self) -> None:
        from kubernetes.client.exceptions import ApiException

        def error(status: int, message: str) -> ApiException:
            e = ApiException(status=status, reason="Reason")
            e.body = json.dumps({"kind": "Status", "message": message})
            return e

        self.assertEqual(
            readable(error(403, 'secrets is forbidden: User "x"'), 30),
            "the Kubernetes API forbids it (RBAC: see the chart's Role): "
            'secrets is forbidden: User "x"',
        )
        self.assertEqual(
            readable(error(422, "spec.x: Invalid value"), 30),
            "the Kubernetes API rejected the object as invalid: spec.x: Invalid value",
        )
        self.assertEqual(readable(error(500, ""), 30), "the Kubernetes API answered 500: Reason")

    def test_network(self) -> None:
        from urllib3.exceptions import MaxRetryError, NewConnectionError, ReadTimeoutError

        refused = NewConnectionError(None, "Failed to establish a new connection: refused")
        self.assertTrue(
            readable(MaxRetryError(None, "/apis", refused), 30).startswith(
                "the Kubernetes API server is unreachable"
            )
        )
        timeout = ReadTimeoutError(None, "/apis", "Read timed out.")
        self.assertEqual(
            readable(MaxRetryError(None, "/apis", timeout), 5),
            "the Kubernetes API did not answer within 5s",
        )
        self.assertEqual(readable(timeout, 5), "the Kubernetes API did not answer within 5s")
