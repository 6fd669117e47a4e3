"""Shared test helpers: building configs from YAML text and small proxies."""

from __future__ import annotations

from translators import model
from xds_server.config.loader import parse_file

PLAIN_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: %(name)s}
spec:
  selector: {app: %(selector)s}
  ports: [{name: http, port: 9080}]
"""
SUBSETS = """---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: %(name)s}
spec:
  host: %(name)s
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"""


def service_yaml(*names: str) -> str:
    """Services with a DestinationRule defining subsets v1, v2, v3."""
    return "\n---\n".join((PLAIN_SERVICE + SUBSETS) % {"name": n, "selector": n} for n in names)


def plain_service_yaml(*names: str, selectors: dict[str, str] | None = None) -> str:
    """Services without a DestinationRule (the test brings its own)."""
    selectors = selectors or {}
    return "\n---\n".join(
        PLAIN_SERVICE % {"name": n, "selector": selectors.get(n, n)} for n in names
    )


ROUTES_TO = """apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: %(name)s}
spec:
  hosts: [%(host)s]
  http:
  - route:
%(routes)s"""
SUBSETS_RULE = """apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: %(host)s}
spec:
  host: %(host)s
  subsets:
%(subsets)s"""


def routes_to(*subsets: str, name: str = "reviews", host: str = "reviews") -> str:
    """A VirtualService splitting `host`'s traffic evenly over these subsets (the
    destination of the first is on line 8)."""
    weight = 100 // len(subsets)
    routes = "".join(
        f"    - destination: {{host: {host}, subset: {s}}}\n"
        f"      weight: {weight + (100 - weight * len(subsets) if i == 0 else 0)}\n"
        for i, s in enumerate(subsets)
    )
    return ROUTES_TO % {"name": name, "host": host, "routes": routes}


def subsets_rule(*subsets: str, host: str = "reviews") -> str:
    """A DestinationRule defining these subsets by the `version` label."""
    lines = "".join(f"  - {{name: {s}, labels: {{version: {s}}}}}\n" for s in subsets)
    return SUBSETS_RULE % {"host": host, "subsets": lines}


def config_from(*texts: str) -> model.MeshConfig:
    resources = []
    mesh = None
    for index, text in enumerate(texts):
        parsed = parse_file(f"test{index}.yaml", text)
        assert parsed.ok, [str(i) for i in parsed.issues]
        resources += parsed.resources
        mesh = parsed.mesh or mesh
    if mesh is None:
        return model.MeshConfig(resources=tuple(resources))
    return model.MeshConfig(resources=tuple(resources), mesh=model.with_mesh_defaults(mesh))


def sidecar(
    name: str,
    app: str,
    version: str = "v1",
    ip: str = "127.0.0.1",
    inbound: int = 15006,
    namespace: str = "default",
) -> model.Proxy:
    return model.Proxy(
        node_id=name,
        namespace=namespace,
        labels={"app": app, "version": version},
        ip=ip,
        bind_address=ip,
        ports=(model.WorkloadPort(9080, inbound),),
    )


# The mesh config that sends hosts outside the registry nowhere.
REGISTRY_ONLY_MESH = """apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
"""
