"""`xds-server analyze`: Istio's codes at the right lines for broken meshes (table-driven),
none for a sound one, and istioctl's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import plain_service_yaml

SERVICES = plain_service_yaml("reviews", "ratings")


def vs(body: str, name: str = "reviews") -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: {name}}}\nspec:\n{body}"
    )


GATEWAY = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: NAME}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [HOST]
"""

CASES = {
    "unknown host": (
        vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: nowhere}\n"),
        [("IST0101", 8)],
    ),
    "unknown gateway": (
        vs(
            "  hosts: [reviews]\n  gateways: [missing]\n  http:\n"
            "  - route: [{destination: {host: reviews}}]\n"
        ),
        [("IST0101", 6)],
    ),
    "two sidecars without a selector": (
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: a}\n"
        "spec: {egress: [{hosts: ['./*']}]}\n---\n"
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: b}\n"
        "spec: {egress: [{hosts: ['./*']}]}\n",
        [("IST0113", 8)],
    ),
    "unverified TLS": (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\n"
        "spec:\n  host: ratings\n  trafficPolicy:\n"
        "    tls: {mode: SIMPLE, insecureSkipVerify: true}\n"
        "    portLevelSettings:\n"
        "    - port: {number: 9080}\n      tls: {mode: SIMPLE, insecureSkipVerify: true}\n",
        [("IST0128", 7), ("IST0129", 10)],
    ),
    "unreachable rules": (
        vs(
            "  hosts: [reviews]\n  http:\n"
            "  - match: [{uri: {prefix: /a}}]\n    route: [{destination: {host: reviews}}]\n"
            "  - match: [{uri: {prefix: /a}}]\n    route: [{destination: {host: ratings}}]\n"
            "  - route: [{destination: {host: reviews}}]\n"
            "  - route: [{destination: {host: ratings}}]\n"
        ),
        [("IST0130", 9), ("IST0130", 12)],
    ),
    "host not in gateway": (
        GATEWAY.replace("NAME", "gw").replace("HOST", "bookinfo.example.com")
        + "---\n"
        + vs(
            "  hosts: [reviews.example.com]\n  gateways: [gw]\n  http:\n"
            "  - route: [{destination: {host: reviews}}]\n"
        ),
        [("IST0132", 14)],
    ),
    "conflicting gateways": (
        GATEWAY.replace("NAME", "a").replace("HOST", "x.example.com")
        + "---\n"
        + GATEWAY.replace("NAME", "b").replace("HOST", "x.example.com"),
        [("IST0145", 17)],
    ),
    "conflicting mesh virtual services": (
        vs("  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}]}]\n", "a")
        + "---\n"
        + vs("  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}]}]\n", "b"),
        [("IST0109", 12)],
    ),
    "schema": (vs("  hostz: [reviews]\n"), [("IST0106", 5)]),
    "one of two matches seen before": (
        vs(
            "  hosts: [reviews]\n  http:\n"
            "  - match: [{uri: {prefix: /a}, name: first}]\n"
            "    route: [{destination: {host: reviews}}]\n"
            "  - match: [{uri: {prefix: /a}, name: again}, {uri: {prefix: /b}}]\n"
            "    route: [{destination: {host: ratings}}]\n"
        ),
        [("IST0131", 9)],
    ),
    "a destination port is needed": (
        "apiVersion: v1\nkind: Service\nmetadata: {name: two}\nspec:\n  selector: {app: two}\n"
        "  ports: [{name: http, port: 80}, {name: http-admin, port: 81}]\n---\n"
        + vs("  hosts: [two]\n  http: [{route: [{destination: {host: two}}]}]\n", "two"),
        [("IST0112", 13)],
    ),
    "a port name without a protocol": (
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n"
        "  ports: [{name: web, port: 80}]\n",
        [("IST0118", 6)],
    ),
    "a relative EnvoyFilter patch without a priority": (
        "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: f}\n"
        "spec:\n  configPatches:\n  - applyTo: HTTP_FILTER\n"
        "    match: {listener: {filterChain: {filter: {name: "
        "envoy.filters.network.http_connection_manager, subFilter: {name: "
        "envoy.filters.http.router}}}}}\n"
        "    patch:\n      operation: INSERT_BEFORE\n"
        "      value: {name: envoy.filters.http.buffer, typed_config: {'@type': "
        "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer, "
        "max_request_bytes: 1024}}\n",
        [("IST0151", 9)],
    ),
    "an unknown telemetry provider": (
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t}\n"
        "spec: {accessLogging: [{providers: [{name: nope}]}]}\n",
        [("IST0163", 4)],
    ),
}


def _analyze(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "services.yaml").write_text(SERVICES)
    (tmp_path / "mesh.yaml").write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "xds_server", "analyze", str(tmp_path), "-o", "json", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_meshes_get_istio_s_codes_at_their_lines(tmp_path: Path, case: str) -> None:
    text, expected = CASES[case]
    done = _analyze(tmp_path, text)
    found = json.loads(done.stdout)
    got = sorted((m["code"], m["line"]) for m in found if m["file"].endswith("mesh.yaml"))
    assert got == sorted(expected), (case, found)
    errors = any(m["level"] == "Error" for m in found)
    assert done.returncode == (79 if errors else 0)


def test_a_sound_mesh_has_nothing_to_say_and_thresholds_decide_the_exit(tmp_path: Path) -> None:
    sound = vs("  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}]}]\n")
    done = _analyze(tmp_path, sound)
    assert done.returncode == 0 and json.loads(done.stdout) == []
    unverified = CASES["unverified TLS"][0]
    assert _analyze(tmp_path, unverified).returncode == 0  # warnings only
    assert _analyze(tmp_path, unverified, "--failure-threshold", "Warning").returncode == 79
    log = subprocess.run(
        [sys.executable, "-m", "xds_server", "analyze", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "Warning [IST0128] (DestinationRule default/r " in log and "mesh.yaml:7)" in log


def test_istio_s_deprecated_gateway_names_resolve(tmp_path: Path) -> None:
    gateway = GATEWAY.replace("NAME", "gw").replace("HOST", "reviews.example.com")
    gateway = gateway.replace("metadata: {name: gw}", "metadata: {name: gw, namespace: edge}")
    bound = vs(
        "  hosts: [reviews.example.com]\n  gateways: [gw.edge.svc.cluster.local]\n  http:\n"
        "  - route: [{destination: {host: reviews}}]\n"
    )
    done = _analyze(tmp_path, gateway + "---\n" + bound)
    assert json.loads(done.stdout) == [] and done.returncode == 0
