"""Semantic checks of a DestinationRule."""

from __future__ import annotations

from collections.abc import Iterator

from protos import destination_rule_pb2 as dr_pb2
from xds_server.config.checks_common import Finding, enabled, optional_duration, port_ok
from xds_server.config.yaml_lines import Path

_LB = dr_pb2.LoadBalancerSettings
# Envoy's cluster.proto: MaglevLbConfig.table_size <= 5000011 (and prime, maglev_lb.cc),
# RingHashLbConfig.minimum_ring_size <= 8388608 (its default maximum_ring_size too).
MAGLEV_MAX_TABLE_SIZE = 5_000_011
RING_HASH_MAX_SIZE = 8_388_608
MAX_UINT32 = 0xFFFFFFFF
# Linux refuses larger TCP_KEEPIDLE / TCP_KEEPINTVL (seconds) and TCP_KEEPCNT values.
LINUX_MAX_KEEPALIVE_SECONDS = 32767
LINUX_MAX_KEEPALIVE_PROBES = 127


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    divisor = 3
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 2
    return True


def _next_prime(n: int) -> int:
    while not is_prime(n):
        n += 1
    return n


def _hash_sizes(hashing: _LB.ConsistentHashLB, path: Path) -> Iterator[Finding]:
    """What Envoy refuses in the table or ring the translation configures (the ring sizes
    are ignored under maglev, the deprecated one under ringHash; 0 keeps the default)."""
    if hashing.HasField("maglev"):
        size = hashing.maglev.table_size
        at = (*path, "maglev", "tableSize")
        if size > MAGLEV_MAX_TABLE_SIZE:
            yield at, f"maglev table size {size} above Envoy's maximum {MAGLEV_MAX_TABLE_SIZE}"
        elif size and not is_prime(size):
            yield (
                at,
                f"maglev table size {size} is not prime, which Envoy requires "
                f"(the next prime is {_next_prime(size)})",
            )
        return
    if hashing.HasField("ring_hash"):
        size, at = hashing.ring_hash.minimum_ring_size, (*path, "ringHash", "minimumRingSize")
    else:
        size, at = hashing.minimum_ring_size, (*path, "minimumRingSize")
    if size > RING_HASH_MAX_SIZE:
        yield at, f"ring size {size} above Envoy's maximum {RING_HASH_MAX_SIZE}"


def _load_balancer(lb: dr_pb2.LoadBalancerSettings, path: Path) -> Iterator[Finding]:
    if lb.WhichOneof("lb_policy") == "simple" and lb.simple == _LB.PASSTHROUGH:
        yield (
            (*path, "simple"),
            (
                "PASSTHROUGH is not supported: without traffic capture there is no original "
                "destination to pass through to"
            ),
        )
    if lb.HasField("consistent_hash"):
        hashing = lb.consistent_hash
        hpath = (*path, "consistentHash")
        key = hashing.WhichOneof("hash_key")
        if key is None:
            yield (
                hpath,
                (
                    "required: one of httpHeaderName, httpCookie, useSourceIp, "
                    "httpQueryParameterName"
                ),
            )
        elif key == "http_cookie":
            if not hashing.http_cookie.name:
                yield (*hpath, "httpCookie", "name"), "required: cookie name"
            yield from optional_duration(
                hashing.http_cookie, "ttl", (*hpath, "httpCookie", "ttl"), 0
            )
        elif key == "use_source_ip" and not hashing.use_source_ip:
            yield (*hpath, "useSourceIp"), "must be true when set"
        if enabled("consistent-hash"):
            if key == "http_header_name" and not hashing.http_header_name:
                yield (*hpath, "httpHeaderName"), "must not be empty (Envoy refuses it)"
            elif key == "http_query_parameter_name" and not hashing.http_query_parameter_name:
                yield (*hpath, "httpQueryParameterName"), "must not be empty (Envoy refuses it)"
            yield from _hash_sizes(hashing, hpath)


def _connection_pool(pool: dr_pb2.ConnectionPoolSettings, path: Path) -> Iterator[Finding]:
    tcp, http = pool.tcp, pool.http
    for name, value, at in (
        ("maxConnections", tcp.max_connections, "tcp"),
        ("http1MaxPendingRequests", http.http1_max_pending_requests, "http"),
        ("http2MaxRequests", http.http2_max_requests, "http"),
        ("maxRequestsPerConnection", http.max_requests_per_connection, "http"),
        ("maxRetries", http.max_retries, "http"),
        ("maxConcurrentStreams", http.max_concurrent_streams, "http"),
    ):
        if value < 0:
            yield (*path, at, name), f"must not be negative, got {value}"
    yield from optional_duration(tcp, "connect_timeout", (*path, "tcp", "connectTimeout"))
    yield from optional_duration(tcp, "idle_timeout", (*path, "tcp", "idleTimeout"))
    yield from optional_duration(
        tcp, "max_connection_duration", (*path, "tcp", "maxConnectionDuration")
    )
    yield from optional_duration(http, "idle_timeout", (*path, "http", "idleTimeout"))
    if tcp.HasField("tcp_keepalive"):
        keepalive = tcp.tcp_keepalive
        kpath = (*path, "tcp", "tcpKeepalive")
        yield from optional_duration(keepalive, "time", (*kpath, "time"), 1000)
        yield from optional_duration(keepalive, "interval", (*kpath, "interval"), 1000)
        for name in ("time", "interval"):
            seconds = getattr(keepalive, name).seconds
            if enabled("tcp-keepalive") and seconds > MAX_UINT32:
                yield (
                    (*kpath, name),
                    f"{seconds}s does not fit Envoy's keepalive_{name} (uint32 seconds)",
                )


def _outlier(outlier: dr_pb2.OutlierDetection, path: Path) -> Iterator[Finding]:
    for name, value in (
        ("maxEjectionPercent", outlier.max_ejection_percent),
        ("minHealthPercent", outlier.min_health_percent),
    ):
        if not 0 <= value <= 100:
            yield (*path, name), f"{value} out of range 0-100"
    if outlier.consecutive_errors < 0:
        yield (*path, "consecutiveErrors"), "must not be negative"
    yield from optional_duration(outlier, "interval", (*path, "interval"))
    yield from optional_duration(outlier, "base_ejection_time", (*path, "baseEjectionTime"))


_TLS = dr_pb2.ClientTLSSettings.TLSmode
_FILES = (
    ("client_certificate", "clientCertificate"),
    ("private_key", "privateKey"),
    ("ca_certificates", "caCertificates"),
)


def _tls(tls: dr_pb2.ClientTLSSettings, path: Path) -> Iterator[Finding]:
    """Istio's rules for client TLS: what each mode needs and refuses."""
    mode = tls.mode
    if mode == _TLS.MUTUAL:
        for field, name in _FILES[:2]:
            if not getattr(tls, field):
                yield (*path, name), "required with mode MUTUAL (a file on the sidecar's machine)"
    elif mode == _TLS.ISTIO_MUTUAL:
        for field, name in _FILES:
            if getattr(tls, field):
                yield (*path, name), "not with ISTIO_MUTUAL: the mesh's certificates are used"
    elif mode == _TLS.SIMPLE:
        for field, name in _FILES[:2]:
            if getattr(tls, field):
                yield (*path, name), "only with mode MUTUAL (SIMPLE sends no certificate)"
    for i, san in enumerate(tls.subject_alt_names):
        if not san.strip():
            yield (*path, "subjectAltNames", i), "must not be empty"


def _policy(policy: dr_pb2.TrafficPolicy, path: Path) -> Iterator[Finding]:
    yield from _load_balancer(policy.load_balancer, (*path, "loadBalancer"))
    yield from _connection_pool(policy.connection_pool, (*path, "connectionPool"))
    yield from _outlier(policy.outlier_detection, (*path, "outlierDetection"))
    if policy.HasField("tls"):
        yield from _tls(policy.tls, (*path, "tls"))
    seen: set[int] = set()
    for i, entry in enumerate(policy.port_level_settings):
        ppath = (*path, "portLevelSettings", i)
        number = entry.port.number
        if not port_ok(number):
            yield (*ppath, "port", "number"), f"port {number} out of range 1-65535"
        elif number in seen:
            yield (*ppath, "port", "number"), f"duplicate port {number}"
        seen.add(number)
        yield from _load_balancer(entry.load_balancer, (*ppath, "loadBalancer"))
        yield from _connection_pool(entry.connection_pool, (*ppath, "connectionPool"))
        yield from _outlier(entry.outlier_detection, (*ppath, "outlierDetection"))
        if entry.HasField("tls"):
            yield from _tls(entry.tls, (*ppath, "tls"))


def check_destination_rule(dr: dr_pb2.DestinationRule) -> Iterator[Finding]:
    if not dr.host:
        yield ("spec", "host"), "required: host"
    yield from _policy(dr.traffic_policy, ("spec", "trafficPolicy"))
    seen: set[str] = set()
    for i, subset in enumerate(dr.subsets):
        if not subset.name:
            yield ("spec", "subsets", i, "name"), "required: subset name"
        elif subset.name in seen:
            yield ("spec", "subsets", i, "name"), f'duplicate subset name "{subset.name}"'
        seen.add(subset.name)
        yield from _policy(subset.traffic_policy, ("spec", "subsets", i, "trafficPolicy"))


def _deprecated(policy: dr_pb2.TrafficPolicy, path: Path) -> Iterator[Finding]:
    outlier = policy.outlier_detection
    if outlier.consecutive_errors:
        applied = not (
            outlier.HasField("consecutive_5xx_errors")
            or outlier.HasField("consecutive_gateway_errors")
        )
        how = (
            "applied as consecutiveGatewayErrors (502/503/504), as Istio 1.0-1.6 did"
            if applied
            else "ignored because consecutive5xxErrors or consecutiveGatewayErrors is set"
        )
        yield (*path, "outlierDetection", "consecutiveErrors"), f"deprecated; {how}"


def _keepalive(pool: dr_pb2.ConnectionPoolSettings, path: Path) -> Iterator[Finding]:
    """Envoy takes any keepalive values, but Linux refuses the socket options past its
    limits, and then Envoy cannot apply them to upstream connections."""
    keepalive = pool.tcp.tcp_keepalive
    kpath = (*path, "connectionPool", "tcp", "tcpKeepalive")
    for name in ("time", "interval"):
        seconds = getattr(keepalive, name).seconds
        if LINUX_MAX_KEEPALIVE_SECONDS < seconds <= MAX_UINT32:
            yield (
                (*kpath, name),
                f"{seconds}s is above Linux's limit of {LINUX_MAX_KEEPALIVE_SECONDS}s for "
                "TCP keepalive; the socket option will fail",
            )
    if keepalive.probes > LINUX_MAX_KEEPALIVE_PROBES:
        yield (
            (*kpath, "probes"),
            f"{keepalive.probes} probes is above Linux's limit of {LINUX_MAX_KEEPALIVE_PROBES}; "
            "the socket option will fail",
        )


def _policy_warnings(policy: dr_pb2.TrafficPolicy, path: Path) -> Iterator[Finding]:
    yield from _deprecated(policy, path)
    if enabled("tcp-keepalive"):
        yield from _keepalive(policy.connection_pool, path)
        for i, entry in enumerate(policy.port_level_settings):
            yield from _keepalive(entry.connection_pool, (*path, "portLevelSettings", i))


def destination_rule_warnings(dr: dr_pb2.DestinationRule) -> Iterator[Finding]:
    yield from _policy_warnings(dr.traffic_policy, ("spec", "trafficPolicy"))
    for i, subset in enumerate(dr.subsets):
        yield from _policy_warnings(subset.traffic_policy, ("spec", "subsets", i, "trafficPolicy"))
