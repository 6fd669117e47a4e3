"""Write the Envoy bootstraps in this directory (run after changing xds_server/bootstrap.py).

`sidecar-local.yaml` is a sidecar on this machine, against `xds-server serve` defaults.
The compose-* sidecars share their app container's network namespace, reach the server by
its service name, and listen on every address so that other containers can reach them;
the app itself listens on 127.0.0.1 only. compose-ingressgateway.yaml is the ingress
gateway (role gateway), which needs no app.
tests/test_envoy_configs.py fails when these files are stale or Envoy refuses them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from xds_server.bootstrap import BootstrapOptions, render

HERE = Path(__file__).resolve().parent


def compose_sidecar(name: str, app: str, version: str, app_port: int | None) -> BootstrapOptions:
    return BootstrapOptions(
        node_id=name,
        labels={"app": app, "version": version},
        service_account=app,
        app_ports=[app_port] if app_port else [],
        xds_address="xds-server:15010",
        bind_address="0.0.0.0",
        # The client's outbound proxy is published to the host, so it listens everywhere.
        outbound_address="0.0.0.0" if app_port is None else "127.0.0.1",
    )


BOOTSTRAPS = {
    "sidecar-local.yaml": BootstrapOptions(
        node_id="reviews-v1",
        labels={"app": "reviews", "version": "v1"},
        service_account="reviews",
        app_ports=[9080],
        ip="127.0.0.1",
    ),
    "compose-sleep.yaml": compose_sidecar("sleep", "sleep", "v1", None),
    "compose-reviews-v1.yaml": compose_sidecar("reviews-v1", "reviews", "v1", 9080),
    "compose-reviews-v2.yaml": compose_sidecar("reviews-v2", "reviews", "v2", 9080),
    "compose-reviews-v3.yaml": compose_sidecar("reviews-v3", "reviews", "v3", 9080),
    # The ingress gateway: Gateways select it by label; it listens on their server ports.
    "compose-ingressgateway.yaml": BootstrapOptions(
        node_id="ingressgateway",
        labels={"app": "istio-ingressgateway", "istio": "ingressgateway"},
        service_account="istio-ingressgateway",
        xds_address="xds-server:15010",
        bind_address="0.0.0.0",
        role="gateway",
    ),
}


def main(out: Path = HERE) -> None:
    for name, options in BOOTSTRAPS.items():
        (out / name).write_text(render(options))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
