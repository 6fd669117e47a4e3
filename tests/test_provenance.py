"""Provenance: the YAML behind each resource a proxy is sent, as the translator picks it."""

from __future__ import annotations

from tests.helpers import config_from, sidecar
from translators import model
from xds_server.provenance import for_proxy

EGRESS = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: github, namespace: egress}
spec:
  hosts: [api.github.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ext, namespace: egress}
spec:
  host: api.github.com
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ghwrong, namespace: github}
spec:
  host: api.github.com
"""
GATEWAY = """apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ingress}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mesh-reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
"""


def test_the_rule_of_the_namespace_that_defines_the_host() -> None:
    config = config_from(EGRESS)
    name = "outbound|443||api.github.com"
    sources = for_proxy(config, sidecar("caller", "caller"), [name], [])["clusters"][name]
    assert any(s.startswith("DestinationRule egress/ext (") for s in sources), sources
    assert not any("ghwrong" in s for s in sources)


def test_a_gateway_s_virtual_hosts_come_from_the_virtual_services_bound_to_it() -> None:
    config = config_from(GATEWAY)
    gateway = model.Proxy("ingress", labels={"istio": "ingressgateway"}, role="gateway")
    sources = for_proxy(config, gateway, [], ["*:8080"])["virtual_hosts"]["*:8080"]
    assert any(s.startswith("VirtualService default/ingress (") for s in sources), sources
    assert not any("mesh-reviews" in s for s in sources)
    mesh = for_proxy(
        config, sidecar("caller", "caller"), [], ["reviews.default.svc.cluster.local:9080"]
    )
    (owner, *_) = mesh["virtual_hosts"]["reviews.default.svc.cluster.local:9080"]
    assert owner.startswith("VirtualService default/mesh-reviews (")
