"""Inputs that real Envoy refuses are refused at load time, with file:line and field path,
and their nearby valid neighbours are accepted: by the loader and by Envoy.

Each case is checked twice. At load time: the error names the marked line (`#!`) and the
field. Against Envoy 1.40: with the case's check turned off (XDS_SERVER_UNSAFE_SKIP_CHECKS),
the config is translated for a sidecar (and a gateway when there is a Gateway), put into a
static bootstrap (RDS inlined, EDS clusters made STATIC with their endpoints inline) and
run through `envoy --mode validate`, which must fail for the expected reason; all the
neighbours together, each in its own namespace, must pass in one Envoy run.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from protos import (
    destination_rule_pb2,
    gateway_pb2,
    mesh_config_pb2,
    service_entry_pb2,
    service_pb2,
    service_profile_pb2,
    sidecar_pb2,
    smi_pb2,
    virtual_service_pb2,
    workload_entry_pb2,
)
from tests.helpers import sidecar
from translators import model
from translators.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from translators.snapshot import Translator, World
from xds_server.config import validation
from xds_server.config.checks_common import CHECK_NAMES, SKIP_ENV, re2_program_size
from xds_server.config.checks_envoy import FREE_TEXT_FIELDS, endpoint_findings
from xds_server.config.loader import ParsedFile, parse_file
from xds_server.envoy_binary import find_envoy

MARK = "#!"
# Envoy refuses the endpoint (malformed IP address); the translator leaves it out, so
# that a reported error never becomes an EDS update every proxy rejects.
DROPPED = "<left out by the translator>"
TRANSLATION_FAILS = "translation fails"  # the translator cannot even build it

SVC = """apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80}]
"""
TCP_SVC = SVC.replace("name: http, port: 80", "name: tcp-db, port: 3306")
SVC2 = SVC.replace("{name: web}", "{name: web2}").replace("{app: web}", "{app: web2}")


def vs(rules: str, hosts: str = "[web]") -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\n"
        f"spec:\n  hosts: {hosts}\n  http:\n{rules}"
    )


ROUTE_TO_WEB = "    route: [{destination: {host: web}}]\n"


def rule(line: str, route: str = ROUTE_TO_WEB) -> str:
    """One HTTP rule whose first line is `line` (marked as the offending one)."""
    return vs(f"  - {line} {MARK}\n{route}")


def match(spec: str) -> str:
    return rule(f"match: [{spec}]")


def dr(policy: str, extra: str = "") -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web}\n"
        f"spec:\n  host: web\n  trafficPolicy:\n    {policy} {MARK}\n{extra}"
    )


def lb(hashing: str) -> str:
    return dr(f"loadBalancer: {{consistentHash: {{{hashing}}}}}")


def se(
    endpoints: str,
    resolution: str = "STATIC",
    ports: str = "",
    hosts: str = "[ext]",
    vips: str = "",
    mark: str = "",
) -> str:
    """A ServiceEntry; `mark`: "ports" or "endpoints", the line to mark."""
    addresses = f"  addresses: {vips}\n" if vips else ""
    marks = {mark: f" {MARK}"} if mark else {}
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\n"
        f"spec:\n  hosts: {hosts}\n{addresses}"
        f"  ports: [{{number: 80, name: http, protocol: HTTP{ports}}}]{marks.get('ports', '')}\n"
        f"  resolution: {resolution}\n  endpoints: [{endpoints}]{marks.get('endpoints', '')}\n"
    )


def workload_entry(address: str, extra: str = "") -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: we}\n"
        f"spec:\n  address: {address}\n  labels: {{app: web}}\n{extra}"
    )


def mesh(line: str) -> str:
    return (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n"
        f"data:\n  mesh: |\n    {line} {MARK}\n"
    )


def split(*weights: int, mark: int | None = None) -> str:
    """Backends web, web2, web2...; MARK on backend `mark`, else on `backends:`."""
    backends = "".join(
        f"  - {{service: {'web' if i == 0 else 'web2'}, weight: {w}}}"
        + (f" {MARK}\n" if i == mark else "\n")
        for i, w in enumerate(weights)
    )
    head = "  backends:" + ("\n" if mark is not None else f" {MARK}\n")
    return (
        "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: s}\n"
        f"spec:\n  service: web\n{head}{backends}"
    )


def profile(route: str, budget: str = "") -> str:
    return (
        "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\n"
        "metadata: {name: web.default.svc.cluster.local}\n"
        f"spec:\n  routes:\n  - {route}\n{budget}"
    )


def gateway(hosts: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\n"
        "spec:\n  selector: {istio: ingressgateway}\n  servers:\n"
        f"  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: {hosts} {MARK}\n"
        "---\n"
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: gw-web}\n"
        "spec:\n  hosts: ['*']\n  gateways: [gw]\n  http:\n" + ROUTE_TO_WEB.replace("    ", "  - ")
    )


@dataclass(frozen=True)
class Case:
    id: str
    check: str  # the check (CHECK_NAMES) that refuses `bad`
    bad: str  # the last document of a file, with MARK on the offending line
    good: str  # a nearby value we and Envoy accept
    field: str
    words: str  # in our message
    envoy: str | None  # in Envoy's error; None: not an Envoy limit (see `why`)
    context: tuple[str, ...] = (SVC,)  # documents before it
    why: str = ""


def _cases() -> list[Case]:
    c = Case
    h0, tp = "spec.http[0]", "spec.trafficPolicy"
    m0, ch = f"{h0}.match[0]", f"{tp}.loadBalancer.consistentHash"
    size, out_of_range = "program size of 101 > max program size of 100", "Duration out-of-range"
    long = 9_223_372_036
    star = "no argument for repetition operator"
    regex_empty = "RegexMatcherValidationError.Regex"
    prefix_empty = "StringMatcherValidationError.Prefix"
    domains = "VirtualHostValidationError.Domains"
    header_value = "HeaderValueValidationError.Value"
    port_value = "SocketAddressValidationError.PortValue"
    max_ring = "less than or equal to 8388608"
    lf = "line feed"
    subset_ring = (
        "  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy:\n"
        "      loadBalancer: {consistentHash: {useSourceIp: true, "
        "ringHash: {minimumRingSize: %d}}}%s\n"
    )
    port_lb = (
        "portLevelSettings: [{port: {number: 80}, loadBalancer: {consistentHash: "
        "{httpHeaderName: x, maglev: {tableSize: %d}}}}]"
    )
    two_endpoints = f"  endpoints: {MARK}\n  - {{address: a.example.com}}\n  - {{address: b.ex}}\n"
    budget = "  retryBudget: {retryRatio: %s, minRetriesPerSecond: 1, ttl: 10s}%s\n"
    set_headers = "headers: {request: {set: {%s}}}"
    get = "{name: r, condition: {method: GET}}"
    # fmt: off
    return [
        # 1. RE2 program size, everywhere a regex reaches Envoy.
        c("re2-uri", "re2-program-size", match("{uri: {regex: 'a{97}'}}"),
          match("{uri: {regex: 'a{96}'}}"), f"{m0}.uri.regex", "program size is 101", size),
        c("re2-uri-latin1", "re2-program-size", match("{uri: {regex: '.{49}'}}"),
          match("{uri: {regex: '.{48}'}}"), f"{m0}.uri.regex", "program size is 102",
          "program size of 102"),
        c("re2-header", "re2-program-size", match("{headers: {x-a: {regex: 'a{97}'}}}"),
          match("{headers: {x-a: {regex: 'a{96}'}}}"), f"{m0}.headers.x-a.regex",
          "limit is 100", size),
        c("re2-without-headers", "re2-program-size",
          match("{withoutHeaders: {x-a: {regex: '\\p{L}{14}'}}}"),
          match("{withoutHeaders: {x-a: {regex: '\\p{L}{13}'}}}"),
          f"{m0}.withoutHeaders.x-a.regex", "program size is 102", "program size of 102"),
        c("re2-query", "re2-program-size", match("{queryParams: {q: {regex: 'a{97}'}}}"),
          match("{queryParams: {q: {regex: 'a{96}'}}}"), f"{m0}.queryParams.q.regex",
          "too complex", size),
        c("re2-authority", "re2-program-size", match("{authority: {regex: 'a{97}'}}"),
          match("{authority: {regex: 'a{96}'}}"), f"{m0}.authority.regex", "101", size),
        c("re2-method", "re2-program-size", match("{method: {regex: 'a{97}'}}"),
          match("{method: {regex: 'a{96}'}}"), f"{m0}.method.regex", "101", size),
        c("re2-scheme", "re2-program-size", match("{scheme: {regex: 'a{97}'}}"),
          match("{scheme: {regex: 'a{96}'}}"), f"{m0}.scheme.regex", "101", size),
        c("re2-rewrite", "re2-program-size",
          rule("rewrite: {uriRegexRewrite: {match: 'a{97}', rewrite: /}}"),
          rule("rewrite: {uriRegexRewrite: {match: 'a{96}', rewrite: /}}"),
          f"{h0}.rewrite.uriRegexRewrite.match", "101", size),
        c("re2-cors", "re2-program-size", rule("corsPolicy: {allowOrigins: [{regex: 'a{97}'}]}"),
          rule("corsPolicy: {allowOrigins: [{regex: 'a{96}'}]}"),
          f"{h0}.corsPolicy.allowOrigins[0].regex", "101", size),
        c("re2-profile", "re2-program-size",
          profile(f"{{name: r, condition: {{pathRegex: 'a{{97}}'}}}} {MARK}"),
          profile("{name: r, condition: {pathRegex: 'a{96}'}}"),
          "spec.routes[0].condition.pathRegex", "101", size),
        # Regexes Envoy cannot compile at all, or refuses empty.
        c("regex-star-uri", "regex-syntax", match("{uri: {regex: '*'}}"),
          match("{uri: {regex: '.*'}}"), f"{m0}.uri.regex", "no argument", star),
        c("regex-star-cors", "regex-syntax", rule("corsPolicy: {allowOrigins: [{regex: '*'}]}"),
          rule("corsPolicy: {allowOrigins: [{regex: '.*'}]}"),
          f"{h0}.corsPolicy.allowOrigins[0].regex", "no argument", star),
        c("regex-wide-escape", "regex-syntax", match("{uri: {regex: '\\x{100}'}}"),
          match("{uri: {regex: '\\x{FF}'}}"), f"{m0}.uri.regex", "invalid escape",
          "invalid escape sequence"),
        c("regex-empty-header", "regex-syntax", match("{headers: {x-a: {regex: ''}}}"),
          match("{headers: {x-a: {regex: '*'}}}"), f"{m0}.headers.x-a.regex", "empty",
          regex_empty),
        c("regex-empty-rewrite", "regex-syntax",
          rule("rewrite: {uriRegexRewrite: {match: '', rewrite: /}}"),
          rule("rewrite: {uriRegexRewrite: {match: '.', rewrite: /}}"),
          f"{h0}.rewrite.uriRegexRewrite.match", "empty", regex_empty),
        # Empty prefixes (Envoy's StringMatcher.prefix has min_len 1; a URI prefix may be "").
        c("prefix-empty-header", "empty-matcher", match("{headers: {x-a: {prefix: ''}}}"),
          match("{headers: {x-a: {}}}"), f"{m0}.headers.x-a.prefix", "empty prefix",
          prefix_empty),
        c("prefix-empty-query", "empty-matcher", match("{queryParams: {q: {prefix: ''}}}"),
          match("{uri: {prefix: ''}, queryParams: {q: {prefix: a}}}"),
          f"{m0}.queryParams.q.prefix", "empty prefix", prefix_empty),
        c("prefix-empty-cors", "empty-matcher", rule("corsPolicy: {allowOrigins: [{prefix: ''}]}"),
          rule("corsPolicy: {allowOrigins: [{exact: ''}]}"),
          f"{h0}.corsPolicy.allowOrigins[0].prefix", "empty prefix", prefix_empty),
        # 2. Durations, whichever field holds them.
        c("duration-timeout", "duration-range", rule(f"timeout: {long}s"),
          rule(f"timeout: {long - 1}.5s"), f"{h0}.timeout", f"just under {long}s", out_of_range),
        c("duration-negative", "duration-range", rule("timeout: -1"), rule("timeout: 0s"),
          f"{h0}.timeout", "negative", "Expected positive duration"),
        c("duration-per-try", "duration-range",
          rule(f"retries: {{attempts: 1, perTryTimeout: {long}s}}"),
          rule(f"retries: {{attempts: 1, perTryTimeout: {long - 1}s}}"),
          f"{h0}.retries.perTryTimeout", "too long", out_of_range),
        c("duration-fault", "duration-range",
          rule(f"fault: {{delay: {{fixedDelay: {long}s, percentage: {{value: 1}}}}}}"),
          rule(f"fault: {{delay: {{fixedDelay: {long - 1}s, percentage: {{value: 1}}}}}}"),
          f"{h0}.fault.delay.fixedDelay", "too long", out_of_range),
        c("duration-cookie-ttl", "duration-range", lb(f"httpCookie: {{name: c, ttl: {long}s}}"),
          lb(f"httpCookie: {{name: c, ttl: {long - 1}s}}"), f"{ch}.httpCookie.ttl",
          "too long", out_of_range),
        c("duration-outlier", "duration-range", dr(f"outlierDetection: {{interval: {long}s}}"),
          dr(f"outlierDetection: {{interval: {long - 1}s}}"),
          f"{tp}.outlierDetection.interval", "too long", out_of_range),
        c("duration-tcp-idle", "duration-range",
          dr(f"connectionPool: {{tcp: {{idleTimeout: {long}s}}}}"),
          dr(f"connectionPool: {{tcp: {{idleTimeout: {long - 1}s}}}}"),
          f"{tp}.connectionPool.tcp.idleTimeout", "too long", out_of_range, (TCP_SVC,)),
        c("duration-profile", "duration-range",
          profile(f"{{name: r, condition: {{method: GET}}, timeout: {long}s}} {MARK}"),
          profile(f"{{name: r, condition: {{method: GET}}, timeout: {long - 1}s}}"),
          "spec.routes[0].timeout", "too long", out_of_range),
        c("duration-mesh", "duration-range", mesh(f"connectTimeout: {long}s"),
          mesh(f"connectTimeout: {long - 1}s"), "data.mesh.connectTimeout", "too long",
          out_of_range),
        c("mesh-connect-timeout", "mesh-connect-timeout", mesh("connectTimeout: 0s"),
          mesh("connectTimeout: 1ms"), "data.mesh.connectTimeout", "at least 1ms", None,
          why="Istio's rule: merged with the defaults, 0s would silently become 10s"),
        # 3. CR, LF, NUL where Envoy wants a host, a header name or a header value.
        c("lf-vs-host", "control-chars", vs(f"  - {ROUTE_TO_WEB[4:]}", f'["a\\nb.com"] {MARK}'),
          vs(f"  - {ROUTE_TO_WEB[4:]}", "['a-b.com']"), "spec.hosts[0]", lf, domains),
        c("nul-se-host", "control-chars", se("", "DNS", hosts=f'["a\\0b.com"] {MARK}'),
          se("", "DNS", hosts="['a-b.com']"), "spec.hosts[0]", "NUL", domains, ()),
        c("lf-se-vip", "control-chars",
          se("{address: 10.0.0.1}", vips=f'["1.2.3.4\\n"] {MARK}'),
          se("{address: 10.0.0.1}", vips="[1.2.3.4]"), "spec.addresses[0]", lf, domains, ()),
        c("lf-gateway-host", "control-chars", gateway('["a\\nb.com"]'), gateway("['a-b.com']"),
          "spec.servers[0].hosts[0]", lf, domains),
        c("cr-header-value", "control-chars", rule(set_headers % 'x-a: "a\\rb"'),
          rule(set_headers % 'x-a: "a\\tb"'), f"{h0}.headers.request.set.x-a",
          "carriage return", header_value),
        c("lf-header-name", "control-chars", rule('headers: {response: {add: {"x\\na": b}}}'),
          rule("headers: {response: {add: {'x a': b}}}"),
          f"{h0}.headers.response.add.x\na", lf, "HeaderValueValidationError.Key"),
        c("nul-header-remove", "control-chars", rule('headers: {request: {remove: ["x\\0a"]}}'),
          rule("headers: {request: {remove: ['x.a']}}"),
          f"{h0}.headers.request.remove[0]", "NUL", "RequestHeadersToRemove"),
        c("lf-route-header", "control-chars",
          vs("  - route:\n    - destination: {host: web}\n"
             f'      headers: {{request: {{set: {{x-a: "a\\nb"}}}}}} {MARK}\n'),
          vs("  - route:\n    - destination: {host: web}\n"
             "      headers: {request: {set: {x-a: 'a b'}}}\n"),
          "spec.http[0].route[0].headers.request.set.x-a", lf, header_value),
        c("lf-match-header-name", "control-chars", match('{headers: {"x\\na": {exact: b}}}'),
          match("{headers: {'x-a': {exact: b}}}"), f"{m0}.headers.x\na", lf,
          "HeaderMatcherValidationError.Name"),
        c("lf-authority-rewrite", "control-chars", rule('rewrite: {authority: "a\\nb"}'),
          rule("rewrite: {authority: 'a b'}"), f"{h0}.rewrite.authority", lf,
          "RouteActionValidationError.HostRewriteLiteral"),
        c("lf-host-header", "control-chars", rule(set_headers % 'host: "a\\nb"'),
          rule(set_headers % "host: a.b"), f"{h0}.headers.request.set.host", lf,
          "RouteActionValidationError.HostRewriteLiteral"),
        c("lf-uri-rewrite", "control-chars", rule('rewrite: {uri: "/a\\nb"}'),
          rule("rewrite: {uri: '/a b'}"), f"{h0}.rewrite.uri", lf,
          "RouteActionValidationError.PrefixRewrite"),
        c("lf-regex-substitution", "control-chars",
          rule('rewrite: {uriRegexRewrite: {match: a, rewrite: "b\\nc"}}'),
          rule("rewrite: {uriRegexRewrite: {match: a, rewrite: 'b c'}}"),
          f"{h0}.rewrite.uriRegexRewrite.rewrite", lf,
          "RegexMatchAndSubstituteValidationError.Substitution"),
        c("lf-redirect-uri", "control-chars", rule('redirect: {uri: "/a\\nb"}', ""),
          rule("redirect: {uri: '/a b'}", ""), f"{h0}.redirect.uri", lf,
          "RedirectActionValidationError.PathRedirect"),
        c("lf-redirect-authority", "control-chars",
          rule('redirect: {uri: /a, authority: "a\\nb"}', ""),
          rule("redirect: {uri: /a, authority: 'a.b'}", ""), f"{h0}.redirect.authority", lf,
          "RedirectActionValidationError.HostRedirect"),
        c("lf-hash-header", "control-chars", lb('httpHeaderName: "x\\na"'),
          lb("httpHeaderName: 'x a'"), f"{ch}.httpHeaderName", lf,
          "HeaderValidationError.HeaderName"),
        # Envoy's other header and matcher limits.
        c("header-name-empty", "header-limits", rule(set_headers % "'': b"),
          rule(set_headers % "x: ''"), f"{h0}.headers.request.set.", "must not be empty",
          "HeaderValueValidationError.Key"),
        c("header-remove-empty", "header-limits", rule("headers: {response: {remove: ['']}}"),
          rule("headers: {response: {remove: [x]}}"), f"{h0}.headers.response.remove[0]",
          "must not be empty", "ResponseHeadersToRemove"),
        c("header-value-16385", "header-limits", rule(set_headers % f"x-a: {'v' * 16385}"),
          rule(set_headers % f"x-a: {'v' * 16384}"), f"{h0}.headers.request.set.x-a",
          "16384 bytes", "at most 16384 bytes"),
        c("headers-1001", "header-limits",
          rule(set_headers % ", ".join(f"x{i}: v" for i in range(1001))),
          rule(set_headers % ", ".join(f"x{i}: v" for i in range(1000))),
          f"{h0}.headers.request", "Envoy allows 1000", "no more than 1000 item(s)"),
        c("match-header-empty", "header-limits", match("{headers: {'': {exact: b}}}"),
          match("{headers: {x: {exact: ''}}}"), f"{m0}.headers.", "must not be empty",
          "HeaderMatcherValidationError.Name"),
        c("query-name-empty", "header-limits", match("{queryParams: {'': {exact: b}}}"),
          match("{queryParams: {q: {exact: ''}}}"), f"{m0}.queryParams.", "must not be empty",
          "QueryParameterMatcherValidationError.Name"),
        c("query-name-1025", "header-limits",
          vs(f"  - match:\n    - queryParams:\n        ? {'q' * 1025} {MARK}\n"
             f"        : {{exact: b}}\n{ROUTE_TO_WEB}"),
          vs(f"  - match:\n    - queryParams:\n        ? {'q' * 1024}\n"
             f"        : {{exact: b}}\n{ROUTE_TO_WEB}"),
          f"{m0}.queryParams.{'q' * 1025}", "1024 bytes", "at most 1024 bytes"),
        # 4. Consistent hashing, wherever a load balancer can be written.
        c("maglev-not-prime", "consistent-hash",
          lb("httpHeaderName: x, maglev: {tableSize: 65536}"),
          lb("httpHeaderName: x, maglev: {tableSize: 65537}"), f"{ch}.maglev.tableSize",
          "next prime is 65537", "must be prime number"),
        c("maglev-too-big", "consistent-hash", dr(port_lb % 5000077), dr(port_lb % 5000011),
          f"{tp}.portLevelSettings[0].loadBalancer.consistentHash.maglev.tableSize",
          "maximum 5000011", "less than or equal to 5000011"),
        c("ring-too-big", "consistent-hash",
          dr("loadBalancer: {simple: ROUND_ROBIN}", subset_ring % (8388609, f" {MARK}"))
          .replace(f"ROUND_ROBIN}} {MARK}", "ROUND_ROBIN}"),
          dr("loadBalancer: {simple: ROUND_ROBIN}", subset_ring % (8388608, "")),
          "spec.subsets[0].trafficPolicy.loadBalancer.consistentHash.ringHash.minimumRingSize",
          "maximum 8388608", max_ring),
        c("ring-deprecated-too-big", "consistent-hash",
          lb("httpCookie: {name: c}, minimumRingSize: 8388609"),
          lb("httpCookie: {name: c}, minimumRingSize: 8388608"), f"{ch}.minimumRingSize",
          "maximum 8388608", max_ring),
        c("hash-header-empty", "consistent-hash", lb("httpHeaderName: ''"),
          lb("httpHeaderName: x"), f"{ch}.httpHeaderName", "must not be empty",
          "HeaderValidationError.HeaderName"),
        c("hash-query-empty", "consistent-hash", lb("httpQueryParameterName: ''"),
          lb("httpQueryParameterName: q"), f"{ch}.httpQueryParameterName", "must not be empty",
          "QueryParameterValidationError.Name"),
        # 5. Endpoint addresses and ports.
        c("static-host-name", "endpoint-address", se("{address: a.example.com}", mark="endpoints"),
          se("{address: 10.0.0.1}"), "spec.endpoints[0].address", "needs an IP address", DROPPED,
          ()),
        c("static-leading-zero", "endpoint-address", se("{address: 010.0.0.1}", mark="endpoints"),
          se("{address: 10.0.0.1}"), "spec.endpoints[0].address", "needs an IP address", DROPPED,
          ()),
        c("static-bracketed-v6", "endpoint-address", se("{address: '[::1]'}", mark="endpoints"),
          se("{address: '::1'}"), "spec.endpoints[0].address", "needs an IP address", DROPPED, ()),
        c("static-unix", "endpoint-address", se("{address: 'unix:///tmp/s'}", mark="endpoints"),
          se("{address: 10.0.0.1}"), "spec.endpoints[0].address", "unix domain socket", DROPPED,
          ()),
        c("workload-entry-unix", "endpoint-address",
          workload_entry(f"'unix:///tmp/s' {MARK}"), workload_entry("10.0.0.2"),
          "spec.address", "unix domain socket", DROPPED),
        c("workload-entry-port", "endpoint-port",
          workload_entry("10.0.0.2", f"  ports: {{http: 70000}} {MARK}\n"),
          workload_entry("10.0.0.2", "  ports: {http: 65535}\n"), "spec.ports.http",
          "out of range", port_value),
        c("service-target-port", "endpoint-port",
          SVC.replace("port: 80}]", f"port: 80, targetPort: 70000}}] {MARK}"),
          SVC.replace("port: 80}", "port: 80, targetPort: 65535}"), "spec.ports[0].targetPort",
          "out of range", port_value, (workload_entry("10.0.0.2"),)),
        c("se-target-port", "endpoint-port",
          se("{address: 10.0.0.1}", ports=", targetPort: 70000", mark="ports"),
          se("{address: 10.0.0.1}", ports=", targetPort: 65535"), "spec.ports[0].targetPort",
          "out of range", port_value, ()),
        c("se-endpoint-port", "endpoint-port",
          se("{address: a.example.com, ports: {http: 70000}}", "DNS", mark="endpoints"),
          se("{address: a.example.com, ports: {http: 65535}}", "DNS"),
          "spec.endpoints[0].ports.http", "out of range", port_value, ()),
        c("dns-round-robin-two", "dns-round-robin",
          se("", "DNS_ROUND_ROBIN").replace("  endpoints: []\n", two_endpoints),
          se("{address: a.example.com}", "DNS_ROUND_ROBIN"), "spec.endpoints",
          "at most one endpoint", "LOGICAL_DNS clusters must have a single", ()),
        c("se-host-empty", "service-entry-hosts", se("", "DNS", hosts=f"['a.com', ''] {MARK}"),
          se("", "DNS", hosts="['a.com', 'b.com']"), "spec.hosts[1]", "must not be empty",
          "SocketAddressValidationError.Address", ()),
        c("direct-body-4097", "direct-response-body",
          rule(f"directResponse: {{status: 200, body: {{string: {'x' * 4097}}}}}", ""),
          rule(f"directResponse: {{status: 200, body: {{string: {'x' * 4096}}}}}", ""),
          f"{h0}.directResponse.body", "limit is 4096 bytes", "maximum is 4096"),
        # Weights and percentages as translated.
        c("split-weight-sum", "traffic-split-weights", split(2147483647, 2147483647, 2),
          split(2147483647, 2147483647), "spec.backends", "add up to 4294967296",
          "exceeds 4294967295", (SVC, SVC2)),
        c("split-weight-int32", "traffic-split-weights", split(2147483648, 1, mark=0),
          split(2147483647, 1), "spec.backends[0].weight", "above the maximum 2147483647",
          TRANSLATION_FAILS, (SVC, SVC2)),
        c("retry-ratio", "retry-budget", profile(get, budget % ("1.5", f" {MARK}")),
          profile(get, budget % ("1.0", "")), "spec.retryBudget.retryRatio", "above 1",
          "PercentValidationError.Value"),
        c("keepalive-uint32", "tcp-keepalive",
          dr("connectionPool: {tcp: {tcpKeepalive: {time: 4294967296s}}}"),
          dr("connectionPool: {tcp: {tcpKeepalive: {time: 4294967295s}}}"),
          f"{tp}.connectionPool.tcp.tcpKeepalive.time", "uint32", TRANSLATION_FAILS),
    ]
    # fmt: on


CASES = _cases()


def marked_line(text: str) -> int:
    (line,) = [i for i, t in enumerate(text.splitlines(), 1) if t.rstrip().endswith(MARK)]
    return line


def file_of(case: Case, good: bool = False) -> str:
    return "---\n".join([*case.context, case.good if good else case.bad])


def errors(parsed: ParsedFile) -> list[str]:
    return [str(i) for i in parsed.issues if i.severity == "error"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused_at_load_time_with_line_and_field(case: Case):
    text = file_of(case)
    issues = [i for i in parse_file("mesh/f.yaml", text).issues if i.severity == "error"]
    assert [(i.line, i.field) for i in issues] == [(marked_line(text), case.field)], issues
    assert case.words in issues[0].message, issues[0].message
    assert issues[0].resource and str(issues[0]).startswith(f"mesh/f.yaml:{issues[0].line}: ")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_neighbour_accepted_and_check_can_be_skipped(case: Case, monkeypatch):
    assert case.check in CHECK_NAMES
    assert not errors(parse_file("f.yaml", file_of(case, good=True)))
    monkeypatch.setenv(SKIP_ENV, f"other,{case.check}")
    assert not errors(parse_file("f.yaml", file_of(case)))


# --- Envoy's verdict -------------------------------------------------------------------------

GATEWAY_PROXY = model.Proxy(
    node_id="gw", labels={"istio": "ingressgateway"}, role="gateway", bind_address="127.0.0.1"
)


def _unpack(packed, message_type):
    message = message_type()
    packed.any.Unpack(message)
    return message


def static_bootstrap(resources: Iterable[dict]) -> bootstrap_pb2.Bootstrap:
    """The proxies' resources as static ones: routes inline in their HCMs, EDS clusters
    as STATIC clusters holding their assignments."""
    out = bootstrap_pb2.Bootstrap()
    out.node.id = out.node.cluster = "envoy-limits"
    clusters: dict[str, cluster_pb2.Cluster] = {}
    for res in resources:
        routes = {n: _unpack(p, route_pb2.RouteConfiguration) for n, p in res[ROUTE].items()}
        endpoints = res[ENDPOINT]
        for name, packed in res[CLUSTER].items():
            cluster = _unpack(packed, cluster_pb2.Cluster)
            if cluster.HasField("eds_cluster_config"):
                cluster.ClearField("eds_cluster_config")
                cluster.type = cluster_pb2.Cluster.STATIC
                assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
                if name in endpoints:
                    assignment = _unpack(endpoints[name], endpoint_pb2.ClusterLoadAssignment)
                cluster.load_assignment.CopyFrom(assignment)
            clusters[name] = cluster
        for packed in res[LISTENER].values():
            listener = _unpack(packed, listener_pb2.Listener)
            for chain in listener.filter_chains:
                for network_filter in chain.filters:
                    hcm = hcm_pb2.HttpConnectionManager()
                    if network_filter.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                        hcm.route_config.CopyFrom(routes[hcm.rds.route_config_name])
                        hcm.ClearField("rds")
                        network_filter.typed_config.Pack(hcm)
            out.static_resources.listeners.append(listener)
    out.static_resources.clusters.extend(clusters[n] for n in sorted(clusters))
    return out


def envoy_verdict(texts: Iterable[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Translate the files for a sidecar (and a gateway) and run Envoy's validate mode."""
    parsed = [parse_file(f"f{i}.yaml", text) for i, text in enumerate(texts)]
    for one in parsed:
        assert one.ok, errors(one)
    mesh = next((p.mesh for p in parsed if p.mesh is not None), None)
    resources = tuple(r for p in parsed for r in p.resources)
    config = model.MeshConfig(resources=resources)
    if mesh is not None:
        config = model.MeshConfig(resources=resources, mesh=model.with_mesh_defaults(mesh))
    translator = Translator(World(config))
    proxies = [sidecar("client", "sleep")]
    if config.of_kind(model.GATEWAY):
        proxies.append(GATEWAY_PROXY)
    bootstrap = static_bootstrap(translator.translate(p) for p in proxies)
    path = tmp_path / "envoy.json"
    path.write_text(json_format.MessageToJson(bootstrap))
    return subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path), "--disable-hot-restart"]
        + ["-l", "critical"],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def envoy() -> str:
    try:
        return find_envoy()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


ENVOY_CASES = [c for c in CASES if c.envoy is not None]


@pytest.mark.parametrize("case", ENVOY_CASES, ids=lambda c: c.id)
def test_envoy_refuses_what_we_refuse(case: Case, envoy, monkeypatch, tmp_path: Path):
    monkeypatch.setenv(SKIP_ENV, case.check)
    if case.envoy == TRANSLATION_FAILS:
        with pytest.raises(ValueError, match="out of range"):
            envoy_verdict([file_of(case)], tmp_path)
        return
    result = envoy_verdict([file_of(case)], tmp_path)
    if case.envoy == DROPPED:
        assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
        return
    assert result.returncode != 0, f"Envoy accepted {case.id}"
    assert case.envoy in result.stdout + result.stderr, (result.stdout + result.stderr)[-2000:]


def in_namespace(text: str, index: int) -> str:
    """The same documents in namespace n<index>, with hosts made unique, so that all the
    neighbours can share one Envoy run."""
    ns = f"n{index}"
    text = re.sub(
        r"metadata: \{name: ([\w.-]+)\}", rf"metadata: {{name: \1, namespace: {ns}}}", text
    )
    text = text.replace("web.default.svc", f"web.{ns}.svc").replace(
        "hosts: [ext]", f"hosts: [ext.{ns}]"
    )
    return re.sub(r"\b(a|b)(-b)?\.com\b", rf"\1\2.{ns}.com", text)


def test_envoy_accepts_every_neighbour(envoy, tmp_path: Path):
    texts = [in_namespace(file_of(c, good=True), i) for i, c in enumerate(CASES)]
    result = envoy_verdict(texts, tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


# --- RE2 as Envoy runs it ------------------------------------------------------------------


def test_program_size_is_computed_as_envoy_computes_it(envoy, monkeypatch, tmp_path: Path):
    """Envoy reports the program size of a regex it refuses: pad each pattern past the
    limit and compare. UTF-8-heavy patterns tell Latin-1 (Envoy 1.40) from UTF-8 apart."""
    monkeypatch.setenv(SKIP_ENV, "re2-program-size")
    for pattern in [r"[^/]+/v\d+/.*", r"é{9}\w", r"(?i)abc|\p{Lu}", r"[а-я]+"]:
        padded = pattern + "a{100}"
        ours = re2_program_size(padded)
        text = SVC + "---\n" + match(f"{{uri: {{regex: '{padded}'}}}}")
        result = envoy_verdict([text], tmp_path)
        assert f"RE2 program size of {ours} >" in result.stderr + result.stdout, pattern


# --- Every Duration and every string of every kind --------------------------------------------

SPEC_TYPES = {
    model.VIRTUAL_SERVICE: virtual_service_pb2.VirtualService,
    model.DESTINATION_RULE: destination_rule_pb2.DestinationRule,
    model.SERVICE_ENTRY: service_entry_pb2.ServiceEntry,
    model.WORKLOAD_ENTRY: workload_entry_pb2.WorkloadEntry,
    model.GATEWAY: gateway_pb2.Gateway,
    model.SIDECAR: sidecar_pb2.Sidecar,
    model.SERVICE: service_pb2.ServiceSpec,
    model.TRAFFIC_SPLIT: smi_pb2.TrafficSplit,
    model.SERVICE_PROFILE: service_profile_pb2.ServiceProfile,
    model.MESH_CONFIG: mesh_config_pb2.MeshConfig,
}


def leaf_paths(descriptor: Descriptor, want, seen=()) -> Iterable[tuple[FieldDescriptor, ...]]:
    """Chains of fields from `descriptor` to each field `want` accepts (a map field stands
    for its values; recursive messages are entered once)."""
    for fd in descriptor.fields:
        if want(fd):
            yield (fd,)
            continue
        if fd.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        inner = fd.message_type
        if inner.GetOptions().map_entry:
            inner = inner.fields_by_name["value"].message_type
        if inner is None or inner in seen or inner.full_name.startswith("google.protobuf."):
            continue
        for rest in leaf_paths(inner, want, (*seen, descriptor)):
            yield (fd, *rest)


def _set(message, chain: tuple[FieldDescriptor, ...], leaf) -> tuple:
    """Set the leaf at the end of `chain` (through lists and maps); its YAML path."""
    path: tuple = ()
    for fd in chain[:-1]:
        path += (fd.json_name,)
        if fd.message_type.GetOptions().map_entry:
            message, path = getattr(message, fd.name)["k"], (*path, "k")
        elif fd.is_repeated:
            message, path = getattr(message, fd.name).add(), (*path, 0)
        else:
            message = getattr(message, fd.name)
    fd = chain[-1]
    path += (fd.json_name,)
    if fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry:
        getattr(message, fd.name)["k"] = leaf
        return (*path, "k")
    if fd.is_repeated:
        target = getattr(message, fd.name)
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            target.add().CopyFrom(leaf)
        else:
            target.append(leaf)
        return (*path, 0)
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(message, fd.name).CopyFrom(leaf)
    else:
        setattr(message, fd.name, leaf)
    return path


def _is_duration(fd: FieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.full_name.endswith(
        "protobuf.Duration"
    )


def _is_map_value_string(fd: FieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_STRING or (
        fd.type == FieldDescriptor.TYPE_MESSAGE
        and fd.message_type.GetOptions().map_entry
        and fd.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING
    )


@pytest.mark.parametrize("kind", sorted(SPEC_TYPES))
def test_every_duration_field_is_bounded(kind: str):
    from google.protobuf import duration_pb2

    chains = list(leaf_paths(SPEC_TYPES[kind].DESCRIPTOR, _is_duration))
    for chain in chains:
        spec = SPEC_TYPES[kind]()
        path = _set(spec, chain, duration_pb2.Duration(seconds=9_223_372_036))
        found = dict(validation.check(kind, spec))
        assert "too long" in found.get((*validation.root_path(kind), *path), ""), (kind, path)


@pytest.mark.parametrize("kind", sorted(SPEC_TYPES))
def test_every_string_refuses_line_breaks_but_free_text(kind: str):
    for chain in leaf_paths(SPEC_TYPES[kind].DESCRIPTOR, _is_map_value_string):
        spec = SPEC_TYPES[kind]()
        fd = chain[-1]
        path = _set(spec, chain, "a\nb")
        if fd.type == FieldDescriptor.TYPE_MESSAGE:  # a map<string, string>: the value
            fd = fd.message_type.fields_by_name["value"]
        found = dict(validation.check(kind, spec))
        message = found.get((*validation.root_path(kind), *path), "")
        if fd.full_name in FREE_TEXT_FIELDS:
            assert not message, (kind, path)
        else:
            assert "line feed" in message, (kind, path, found)


# --- What the checks deliberately leave to Envoy, or add ------------------------------------


def test_every_check_name_is_exercised():
    warnings_only = {"header-name-token", "reserved-ports"}
    assert {c.check for c in CASES} | warnings_only == set(CHECK_NAMES)


def test_header_names_that_are_not_tokens_warn_and_envoy_accepts_them(envoy, tmp_path: Path):
    """Envoy's rule for header names in matchers and header edits is the lax one (strict:
    false: only CR, LF and NUL are refused), so such names are a warning, not an error."""
    text = SVC + "---\n" + rule("headers: {request: {set: {'x a': b}, remove: ['c@d']}}")
    parsed = parse_file("f.yaml", text)
    assert parsed.ok
    warned = {i.field for i in parsed.issues if "not a valid HTTP header name" in i.message}
    assert warned == {
        "spec.http[0].headers.request.set.x a",
        "spec.http[0].headers.request.remove[0]",
    }
    assert envoy_verdict([text], tmp_path).returncode == 0


def test_line_breaks_envoy_accepts_are_refused_anyway(envoy, monkeypatch, tmp_path: Path):
    """Stricter than Envoy on purpose: a cookie name, an exact header value or a
    destination host with a line break can never match or resolve."""
    texts = [
        SVC + "---\n" + lb('httpCookie: {name: "c\\nd"}'),
        SVC + "---\n" + match('{headers: {x-a: {exact: "b\\nc"}}}'),
        SVC + "---\n" + vs('  - route: [{destination: {host: "we\\nb"}}]\n'),
    ]
    for text in texts:
        assert any("line feed" in e for e in errors(parse_file("f.yaml", text)))
    monkeypatch.setenv(SKIP_ENV, "control-chars")
    for i, text in enumerate(texts):
        assert envoy_verdict([in_namespace(text, i)], tmp_path).returncode == 0


def test_reserved_tcp_ports_warn_and_never_reach_envoy(monkeypatch):
    text = "---\n".join(
        [
            TCP_SVC.replace("port: 3306", "port: 15000"),
            TCP_SVC.replace("{name: web}", "{name: dns}").replace("port: 3306", "port: 15009"),
            SVC.replace("{name: web}", "{name: h}").replace("port: 80", "port: 15001"),
        ]
    )
    parsed = parse_file("f.yaml", text)
    assert parsed.ok
    warnings = {(i.line, i.field): i.message for i in parsed.issues if i.severity == "warning"}
    assert "Envoy's admin interface" in warnings[(6, "spec.ports[0].port")]
    assert "sidecars open no listener" in warnings[(6, "spec.ports[0].port")]
    assert "reserved by Istio for HBONE" in warnings[(13, "spec.ports[0].port")]
    assert len(warnings) == 2  # an HTTP port shares the outbound listener: no warning
    monkeypatch.setenv(SKIP_ENV, "reserved-ports")
    assert not [i for i in parse_file("f.yaml", text).issues if i.severity == "warning"]
    listeners = Translator(World(model.MeshConfig(resources=tuple(parsed.resources))))
    names = set(listeners.translate(sidecar("client", "sleep"))[LISTENER])
    assert not any(n.endswith("_15000") for n in names) and "127.0.0.1_15009" in names


def test_gateway_on_the_admin_port_warns():
    text = gateway("['*']").replace("number: 80", "number: 15000")
    parsed = parse_file("f.yaml", text)
    (warning,) = [i for i in parsed.issues if i.severity == "warning"]
    assert warning.field == "spec.servers[0].port.number" and "--admin-port" in warning.message


WE_DNS = workload_entry("db.example.com")
SE_DNS_SELECTING = se("", "DNS").replace(
    "  endpoints: []\n", "  workloadSelector: {labels: {app: web}}\n"
)


def test_workload_entry_host_name_is_an_error_only_where_it_becomes_an_eds_endpoint(
    envoy, tmp_path: Path
):
    def findings(*texts: str) -> list[tuple[str, str]]:
        config = model.MeshConfig(
            resources=tuple(r for t in texts for r in parse_file("f.yaml", t).resources)
        )
        return [(res.ref, message) for res, _, message in endpoint_findings(config)]

    (bad,) = findings(SVC, WE_DNS)
    assert bad[0] == "WorkloadEntry default/we" and "Service default/web" in bad[1]
    # Envoy would refuse it ("malformed IP address"): the translator leaves it out.
    assert envoy_verdict([SVC, WE_DNS], tmp_path).returncode == 0
    assert not findings(SE_DNS_SELECTING, WE_DNS)
    assert envoy_verdict([SE_DNS_SELECTING, WE_DNS], tmp_path).returncode == 0
    assert not findings(SVC, workload_entry("10.0.0.2"))
    two = SE_DNS_SELECTING.replace("DNS", "DNS_ROUND_ROBIN")
    (bad,) = findings(two, WE_DNS, WE_DNS.replace("{name: we}", "{name: we2}"))
    assert "DNS_ROUND_ROBIN" in bad[1]
