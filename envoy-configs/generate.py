"""Write the Envoy bootstraps in this directory (run after changing xds_server/bootstrap.py).

`sidecar-local.yaml` is a sidecar on this machine, against `xds-server serve` defaults.
compose-ingressgateway.yaml is docker-compose.yml's ingress gateway (role gateway), which
needs no app. The compose sidecars' bootstraps (sleep.yaml, reviews-v1.yaml, ...) are
written by `xds-server inject` with docker-compose.yml (see docker-compose.plain.yml).
tests/test_envoy_configs.py fails when any of them is stale or Envoy refuses it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from xds_server.bootstrap import BootstrapOptions, render

HERE = Path(__file__).resolve().parent


BOOTSTRAPS = {
    "sidecar-local.yaml": BootstrapOptions(
        node_id="reviews-v1",
        labels={"app": "reviews", "version": "v1"},
        service_account="reviews",
        app_ports=[9080],
        ip="127.0.0.1",
    ),
    # The ingress gateway: Gateways select it by label; it listens on their server ports.
    "compose-ingressgateway.yaml": BootstrapOptions(
        node_id="ingressgateway",
        labels={"app": "istio-ingressgateway", "istio": "ingressgateway"},
        service_account="istio-ingressgateway",
        # Its token is added at `up` by xds-identity (the label xds-server.io/bootstrap).
        xds_address="xds-server:15012",
        xds_root_cert="/var/run/xds/root-cert.pem",
        bind_address="0.0.0.0",
        role="gateway",
    ),
}


def main(out: Path = HERE) -> None:
    for name, options in BOOTSTRAPS.items():
        (out / name).write_text(render(options))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
