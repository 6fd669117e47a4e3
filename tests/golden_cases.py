"""Golden files: each seed example (and the demo's Bookinfo-style mesh) translated for a
caller sidecar and an ingress gateway, as the Envoy JSON they receive.

`python -m tests.golden_cases` writes tests/golden/*.json; tests/test_golden.py fails on
any difference and prints it. A change to translation shows up as a reviewable diff of
these files (as Envoy Gateway keeps its testdata).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from google.protobuf import json_format

from tests.e2e.conftest import APEX, PLAIN_SERVICES, SERVICES
from tests.helpers import config_from, plain_service_yaml, service_yaml
from translators import model
from translators.resources import SHORT_NAMES, Resources
from translators.snapshot import Translator, World
from xds_server.config.loader import parse_file

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "examples" / "seed"
GOLDEN = Path(__file__).resolve().parent / "golden"
DEMO = ROOT / "xds_server" / "demo_mesh"

# The seeds that carry traffic resources (the others are security and telemetry kinds,
# not translated yet).
SEEDS = (
    "01-traffic-split-reviews",
    "03-destinationrule-productpage",
    "04-circuit-breaker-httpbin",
    "05-canary-helloworld",
    "06-content-routing-reviews",
    "07-smi-trafficsplit",
    "08-serviceprofile-webapp",
    "09-lb-round-robin",
    "10-session-affinity",
    "11-retries-ratings",
    "12-fault-injection-ratings",
    "19-exercise-canary-my-app",
    "20-exercise-circuit-breaking",
)
BASE = (
    service_yaml(*SERVICES) + "\n---\n" + plain_service_yaml(*PLAIN_SERVICES, *APEX, selectors=APEX)
)


def _proxies() -> tuple[model.Proxy, ...]:
    def workload(name: str, app: str, version: str, ip: str) -> model.Proxy:
        return model.Proxy(
            node_id=name,
            labels={"app": app, "version": version},
            ip=ip,
            bind_address=ip,
            outbound_address=ip,
            ports=(model.WorkloadPort(9080, 15006),),
        )

    caller = model.Proxy(
        node_id="caller", labels={"app": "caller"}, ip="127.0.1.10", bind_address="127.0.1.10"
    )
    gateway = model.Proxy(
        node_id="ingress",
        labels={"app": "istio-ingressgateway", "istio": "ingressgateway"},
        ip="127.0.1.20",
        bind_address="127.0.1.20",
        role="gateway",
    )
    return (
        caller,
        gateway,
        workload("reviews-v1", "reviews", "v1", "127.0.1.1"),
        workload("reviews-v2", "reviews", "v2", "127.0.1.2"),
    )


def cases() -> dict[str, model.MeshConfig]:
    out = {name: config_from(BASE, (SEED / f"{name}.yaml").read_text()) for name in SEEDS}
    demo = [parse_file(p.name, p.read_text()) for p in sorted(DEMO.glob("*.yaml"))]
    out["bookinfo-demo"] = model.MeshConfig(
        resources=tuple(r for parsed in demo for r in parsed.resources)
    )
    return out


def _as_json(resources: Resources) -> dict:
    out = {}
    for type_url in sorted(resources, key=lambda t: SHORT_NAMES.get(t, t)):
        items = resources[type_url]
        out[SHORT_NAMES.get(type_url, type_url)] = {
            name: json_format.MessageToDict(items[name].any, preserving_proto_field_name=True)
            for name in sorted(items)
        }
    return out


def render(config: model.MeshConfig) -> str:
    proxies = _proxies()
    translator = Translator(World(config, tuple(p for p in proxies if p.ports)))
    rendered = {p.node_id: _as_json(translator.translate(p)) for p in proxies[:2]}
    return json.dumps(rendered, indent=1, sort_keys=True) + "\n"


def main() -> int:
    GOLDEN.mkdir(exist_ok=True)
    for name, config in cases().items():
        (GOLDEN / f"{name}.json").write_text(render(config))
    print(f"wrote {len(cases())} golden files to {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
