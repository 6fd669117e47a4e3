"""AuthorizationPolicy -> RBAC: Istio's evaluation order, empty-rule semantics, TCP
ports, and what is refused at load time."""

from __future__ import annotations

from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2

from tests.helpers import config_from, sidecar
from translators.authorization import applicable, inbound_rbac
from xds_server.config.loader import parse_file


def policy(name: str, spec: str, namespace: str = "default") -> str:
    return (
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n---\n"
    )


def _http(text: str) -> list[http_rbac_pb2.RBAC]:
    out = []
    for f in inbound_rbac(config_from(text), sidecar("web-1", "web")).http:
        rbac = http_rbac_pb2.RBAC()
        f.typed_config.Unpack(rbac)
        out.append(rbac)
    return out


def test_deny_comes_first_then_allow_and_empty_rules_follow_istio() -> None:
    text = policy("deny-post", "{action: DENY, rules: [{to: [{operation: {methods: [POST]}}]}]}")
    text += policy("allow-sleep", "{rules: [{from: [{source: {principals: ['*/sa/sleep']}}]}]}")
    deny, allow = _http(text)
    assert deny.rules.action == deny.rules.DENY and allow.rules.action == allow.rules.ALLOW
    assert list(deny.rules.policies) == ["ns[default]-policy[deny-post]-rule[0]"]
    # An ALLOW policy without rules allows nothing; a DENY one refuses nothing.
    (nothing,) = _http(policy("none", "{}"))
    assert nothing.rules.action == nothing.rules.ALLOW and not nothing.rules.policies
    assert _http(policy("noop", "{action: DENY}")) == []
    # `rules: [{}]` matches everything.
    (everything,) = _http(policy("all", "{rules: [{}]}"))
    (rule,) = everything.rules.policies.values()
    assert rule.principals[0].any and rule.permissions[0].any


def test_policies_apply_by_namespace_root_and_selector() -> None:
    text = policy("mesh", "{}", namespace="istio-system")
    text += policy("other-ns", "{}", namespace="prod")
    text += policy("for-db", "{selector: {matchLabels: {app: db}}}")
    text += policy("for-web", "{selector: {matchLabels: {app: web}}}")
    names = [p.name for p in applicable(config_from(text), sidecar("web-1", "web"))]
    assert sorted(names) == ["for-web", "mesh"]


def test_tcp_ports_check_what_they_can_and_err_on_refusing() -> None:
    text = policy("allow-get", "{rules: [{to: [{operation: {methods: [GET]}}]}]}")
    text += policy(
        "deny-path",
        "{action: DENY, rules: [{from: [{source: {namespaces: [prod]}}], "
        "to: [{operation: {paths: ['/admin*']}}]}]}",
    )
    filters = inbound_rbac(config_from(text), sidecar("web-1", "web")).network
    deny, allow = (network_rbac_pb2.RBAC() for _ in range(2))
    filters[0].typed_config.Unpack(deny)
    filters[1].typed_config.Unpack(allow)
    # The ALLOW rule names a method TCP cannot see: it matches nothing there.
    assert not allow.rules.policies
    # The DENY rule keeps its source and drops the path: every prod peer is refused.
    (rule,) = deny.rules.policies.values()
    assert rule.permissions[0].any
    assert "ns/prod/sa" in rule.principals[0].authenticated.principal_name.safe_regex.regex


def test_what_is_not_applied_yet_is_refused_with_its_line() -> None:
    for spec, field, words in (
        ("{action: CUSTOM}", "spec.provider.name", "extension provider"),
        (
            "{rules: [{when: [{key: 'request.auth.claims[iss', values: [x]}]}]}",
            "spec.rules[0].when[0].key",
            "unknown key",
        ),
        (
            "{rules: [{when: [{key: 'request.auth.claims[]', values: [x]}]}]}",
            "spec.rules[0].when[0].key",
            "unknown key",
        ),
        ("{rules: [{when: [{key: nope, values: [x]}]}]}", "spec.rules[0].when[0].key", "unknown"),
        (
            "{rules: [{to: [{operation: {ports: [http]}}]}]}",
            "spec.rules[0].to[0].operation.ports[0]",
            "not a port",
        ),
        (
            "{rules: [{from: [{source: {remoteIpBlocks: ['10.0.0.0/33']}}]}]}",
            "spec.rules[0].from[0].source.remoteIpBlocks[0]",
            "not an address",
        ),
    ):
        parsed = parse_file("authz.yaml", policy("p", spec))
        errors = [i for i in parsed.issues if i.severity == "error"]
        assert [(e.field, words in e.message) for e in errors] == [(field, True)], errors


def test_rbac_is_built_once_per_set_of_policies() -> None:
    config = config_from(policy("allow-get", "{rules: [{to: [{operation: {methods: [GET]}}]}]}"))
    first = inbound_rbac(config, sidecar("web-1", "web"))
    assert inbound_rbac(config, sidecar("web-2", "web")) is first  # another proxy
    edited = config_from(policy("allow-get", "{rules: [{to: [{operation: {methods: [PUT]}}]}]}"))
    assert inbound_rbac(edited, sidecar("web-1", "web")) != first  # a new policy object


def test_audit_logs_between_deny_and_allow_and_decides_nothing() -> None:
    text = policy("deny-post", "{action: DENY, rules: [{to: [{operation: {methods: [POST]}}]}]}")
    text += policy("audit", "{action: AUDIT, rules: [{to: [{operation: {paths: ['/admin*']}}]}]}")
    text += policy("allow", "{rules: [{}]}")
    text += policy("audit-nothing", "{action: AUDIT}")  # no rules: nothing to log
    deny, audit, allow = _http(text)
    assert [deny.rules.action, audit.rules.action, allow.rules.action] == [
        deny.rules.DENY,
        audit.rules.LOG,
        allow.rules.ALLOW,
    ]
    assert list(audit.rules.policies) == ["ns[default]-policy[audit]-rule[0]"]
    # On TCP ports an AUDIT rule with HTTP-only fields matches nothing: no filter.
    network = inbound_rbac(config_from(text), sidecar("web-1", "web")).network
    prefixes = []
    for f in network:
        rbac = network_rbac_pb2.RBAC()
        f.typed_config.Unpack(rbac)
        prefixes.append(rbac.stat_prefix)
    assert prefixes == ["rbac_deny.", "rbac_allow."]


MESH = """apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: http-authz
      envoyExtAuthzHttp: {service: authz.local, port: 8000, statusOnError: "503"}
    - name: grpc-authz
      envoyExtAuthzGrpc: {service: foo/authz.foo.svc.cluster.local, port: 9000, failOpen: true}
"""


def test_custom_checks_with_the_provider_what_its_rules_select() -> None:
    from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2

    custom = "{action: CUSTOM, provider: {name: %s}, rules: [{to: [{operation: {paths: [/a]}}]}]}"
    text = policy("custom", custom % "grpc-authz") + policy("deny", "{action: DENY, rules: [{}]}")
    filters = inbound_rbac(config_from(MESH, text), sidecar("web-1", "web")).http
    assert [f.name for f in filters] == [
        "envoy.filters.http.rbac",  # shadow rules: which requests the provider is asked
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.rbac",  # then DENY
    ]
    shadow = http_rbac_pb2.RBAC()
    filters[0].typed_config.Unpack(shadow)
    assert list(shadow.shadow_rules.policies) == [
        "istio-ext-authz-ns[default]-policy[custom]-rule[0]"
    ]
    authz = ext_authz_pb2.ExtAuthz()
    filters[1].typed_config.Unpack(authz)
    assert (
        authz.grpc_service.envoy_grpc.cluster_name == "outbound|9000||authz.foo.svc.cluster.local"
    )
    assert authz.failure_mode_allow and authz.status_on_error.code == 403
    assert authz.filter_enabled_metadata.value.string_match.prefix == "istio-ext-authz"
    # On TCP ports a gRPC provider checks connections; an HTTP one cannot (Istio skips it).
    any_tcp = policy("t", custom.replace("paths: [/a]", "ports: ['80']") % "grpc-authz")
    network = inbound_rbac(config_from(MESH, any_tcp), sidecar("web-1", "web")).network
    assert [f.name for f in network] == [
        "envoy.filters.network.rbac",
        "envoy.filters.network.ext_authz",
    ]
    http_only = policy("h", custom.replace("paths: [/a]", "ports: ['80']") % "http-authz")
    assert inbound_rbac(config_from(MESH, http_only), sidecar("web-1", "web")).network == ()
    # Two providers for one workload, or an unknown one: what they select is denied.
    both = policy("a", custom % "grpc-authz") + policy("b", custom % "http-authz")
    for text in (both, policy("c", custom % "nope")):
        (deny,) = _http_with(MESH, text)
        assert deny.rules.action == deny.rules.DENY and len(deny.rules.policies) >= 1


def _http_with(*texts: str) -> list[http_rbac_pb2.RBAC]:
    out = []
    for f in inbound_rbac(config_from(*texts), sidecar("web-1", "web")).http:
        rbac = http_rbac_pb2.RBAC()
        f.typed_config.Unpack(rbac)
        out.append(rbac)
    return out


def test_seed_16_is_refused_clearly_for_its_ca_certificates_and_18_loads() -> None:
    from pathlib import Path

    seed = Path(__file__).resolve().parents[1] / "examples" / "seed"
    parsed = parse_file("16.yaml", (seed / "16-peerauthentication.yaml").read_text())
    (error,) = [i for i in parsed.issues if i.severity == "error"]
    assert error.field == "spec.mtls.caCertificates" and "not Istio's API" in error.message
    assert error.resource == "PeerAuthentication default/external-mtls" and error.line > 20
    assert parse_file("18.yaml", (seed / "18-permissive-mtls.yaml").read_text()).ok


def test_namespace_prefix_and_suffix_forms_and_malformed_values() -> None:
    import re

    text = policy("ns", "{rules: [{from: [{source: {namespaces: ['prod-*', '*-dev', '*']}}]}]}")
    (allow,) = _http(text)
    (rule,) = allow.rules.policies.values()
    regexes = [
        p.authenticated.principal_name.safe_regex.regex for p in rule.principals[0].or_ids.ids
    ]
    samples = {
        "spiffe://cluster.local/ns/prod-eu/sa/a": [True, False, True],
        "spiffe://cluster.local/ns/web-dev/sa/a": [False, True, True],
        "spiffe://cluster.local/ns/other/sa/a": [False, False, True],
    }
    for principal, expected in samples.items():
        assert [bool(re.fullmatch(r, principal)) for r in regexes] == expected, principal
    for spec, field in (
        ("{rules: [{from: [{source: {principals: ['']}}]}]}", "principals[0]"),
        ("{rules: [{from: [{source: {requestPrincipals: ['a*b']}}]}]}", "requestPrincipals[0]"),
        ("{rules: [{to: [{operation: {paths: ['/a/{*}/b']}}]}]}", "paths[0]"),
    ):
        errors = [i for i in parse_file("a.yaml", policy("p", spec)).issues]
        assert len(errors) == 1 and errors[0].field.endswith(field), [str(e) for e in errors]
