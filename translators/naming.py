"""Istio's names for clusters, listeners and hosts (see reference/istio-mapping.md §1)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from functools import lru_cache

from translators.memo import PerObject
from translators.model import CLUSTER_DOMAIN


def fqdn(host: str, namespace: str, domain: str = CLUSTER_DOMAIN) -> str:
    """Expand a dot-free short name relative to `namespace`; anything else is literal."""
    host = host.lower()
    if "." in host or host == "*" or not host:
        return host
    return f"{host}.{namespace}.svc.{domain}"


def outbound_cluster(port: int, host: str, subset: str = "") -> str:
    return f"outbound|{port}|{subset}|{host}"


def inbound_cluster(app_port: int) -> str:
    return f"inbound|{app_port}||"


def listener_name(bind: str, port: int) -> str:
    return f"{bind}_{port}"


OUTBOUND_ROUTE_NAME = "http_proxy"


def host_matches(pattern: str, host: str) -> bool:
    """Istio host matching: exact, `*`, or a `*.suffix` wildcard covering `host`."""
    if pattern == host or pattern == "*":
        return True
    if pattern.startswith("*"):
        return host.endswith(pattern[1:])
    return False


@lru_cache(maxsize=65536)
def is_ip(address: str) -> bool:
    """An IP literal as Envoy parses one for an endpoint or listener (no brackets, port,
    leading zeros or prefix length)."""
    if _IPV4.fullmatch(address):  # the common case, without ipaddress's slow parse
        return True
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}", re.ASCII)


def has_labels(labels: Mapping[str, str], required: Mapping[str, str]) -> bool:
    """Whether `labels` carry every required key with its value (an empty requirement
    is met): subsets, sourceLabels, workload selectors of policies."""
    if type(required) is not dict:
        required = _plain(required)
    for key, value in required.items():  # noqa: SIM110 (a loop: no generator to set up)
        if labels.get(key) != value:
            return False
    return True


# Label maps of parsed resources (protobuf maps, whose items() is a slow Python mixin)
# as dicts; they are never changed once parsed.
_plain = PerObject(dict)


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A Service or ServiceEntry selector: an empty one selects nothing."""
    return bool(selector) and has_labels(labels, selector)
