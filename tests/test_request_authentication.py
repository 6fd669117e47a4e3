"""RequestAuthentication -> the JWT filter, request principals and claims in RBAC, the
checks at load time, and the key fetcher (against a local HTTP server)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import config_from, sidecar
from tests.jwt_tokens import Issuer
from translators import jwks
from translators.authorization import _request_principal, inbound_rbac
from translators.request_authentication import JWT_FILTER, OPENID_PREFIX, sources
from xds_server.config.loader import parse_file
from xds_server.jwks import JwksSource

ROOT = Path(__file__).resolve().parents[1]
ISSUER = Issuer("testing@secure.istio.io")


def authn(name: str, rules: str, namespace: str = "default", selector: str = "") -> str:
    spec = f"{{{selector}jwtRules: {rules}}}"
    return (
        "apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n---\n"
    )


def policy(name: str, spec: str) -> str:
    return (
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: default}}\nspec: {spec}\n---\n"
    )


def _filters(text: str, fetched=None):
    return inbound_rbac(config_from(text), sidecar("web-1", "web"), fetched).http


def _jwt(text: str, fetched=None) -> jwt_pb2.JwtAuthentication:
    first = _filters(text, fetched)[0]
    assert first.name == JWT_FILTER
    config = jwt_pb2.JwtAuthentication()
    first.typed_config.Unpack(config)
    return config


def test_seed_examples_load() -> None:
    for name in ("17-jwt-authz.yaml", "21-exercise-mtls-jwt-authz.yaml"):
        path = ROOT / "examples" / "seed" / name
        parsed = parse_file(str(path), path.read_text())
        assert parsed.ok, [str(i) for i in parsed.issues]


def test_rules_become_providers_that_allow_a_missing_token() -> None:
    text = authn("a", f"[{{issuer: x, jwks: '{ISSUER.jwks()}', forwardOriginalToken: true}}]")
    text += authn("b", "[{issuer: 'https://y.example', fromHeaders: [{name: x-jwt}]}]")
    config = _jwt(text)
    first, second = config.providers["origins-0"], config.providers["origins-1"]
    assert first.issuer == "x" and first.forward and json.loads(first.local_jwks.inline_string)
    assert second.from_headers[0].name == "x-jwt"
    # Keys not fetched (yet): a key set that verifies nothing, so tokens fail closed.
    assert second.local_jwks.inline_string == jwks.FAIL_CLOSED
    (rule,) = config.rules
    names = [r.provider_name for r in rule.requires.requires_any.requirements]
    assert names == ["origins-0", "origins-1", ""]
    assert rule.requires.requires_any.requirements[-1].HasField("allow_missing")
    # Fetched keys are inlined.
    fetched = {OPENID_PREFIX + "https://y.example": ISSUER.jwks()}
    assert _jwt(text, fetched).providers["origins-1"].local_jwks.inline_string == ISSUER.jwks()


def test_jwt_filter_goes_before_rbac_and_applies_by_selector() -> None:
    text = authn("a", "[{issuer: x, jwksUri: 'http://127.0.0.1:1/k'}]", selector="")
    text += policy("p", "{rules: [{from: [{source: {requestPrincipals: ['*']}}]}]}")
    names = [f.name for f in _filters(text)]
    assert names == [JWT_FILTER, "envoy.filters.http.rbac"]
    other = authn("b", "[{issuer: x, jwks: '{}'}]", selector="selector: {matchLabels: {app: db}}, ")
    assert "jwks" in str(parse_file("x.yaml", other).issues[0])
    only_db = authn(
        "b", "[{issuer: x, jwksUri: 'http://h/k'}]", selector="selector: {matchLabels: {app: db}}, "
    )
    assert _filters(only_db) == ()


def _rbac(text: str) -> http_rbac_pb2.RBAC:
    rbac = http_rbac_pb2.RBAC()
    _filters(text)[-1].typed_config.Unpack(rbac)
    return rbac


def test_request_principals_and_claims_read_the_verified_token() -> None:
    text = authn("a", "[{issuer: 'https://auth.example.com', jwksUri: 'http://h/k'}]")
    text += policy(
        "p",
        "{rules: [{from: [{source: {requestPrincipals: ['https://auth.example.com/*']}}],"
        " when: [{key: 'request.auth.claims[groups]', values: [group1]}]}]}",
    )
    (rule,) = _rbac(text).rules.policies.values()
    ids = rule.principals[0].and_ids.ids
    principal, claim = ids[0], ids[1]
    assert principal.metadata.filter == JWT_FILTER
    assert [s.key for s in principal.metadata.path] == ["payload", "iss"]
    assert principal.metadata.value.string_match.exact == "https://auth.example.com"
    # A claim that is the value or a list that holds it.
    string, listed = claim.or_ids.ids
    assert [s.key for s in string.metadata.path] == ["payload", "groups"]
    assert string.metadata.value.string_match.exact == "group1"
    assert listed.metadata.value.list_match.one_of.string_match.exact == "group1"


def _matches(principal, claims: dict) -> bool:
    """Evaluate our RBAC principal the way Envoy does, against a token's claims."""
    kind = principal.WhichOneof("identifier")
    if kind == "any":
        return True
    if kind == "not_id":
        return not _matches(principal.not_id, claims)
    if kind == "or_ids":
        return any(_matches(p, claims) for p in principal.or_ids.ids)
    if kind == "and_ids":
        return all(_matches(p, claims) for p in principal.and_ids.ids)
    assert kind == "metadata"
    value = claims.get(principal.metadata.path[1].key)
    matcher = principal.metadata.value
    if matcher.WhichOneof("match_pattern") == "present_match":
        return value is not None
    m = matcher.string_match
    if not isinstance(value, str):
        return False
    which = m.WhichOneof("match_pattern")
    return {
        "exact": value == m.exact,
        "prefix": value.startswith(m.prefix),
        "suffix": value.endswith(m.suffix),
    }[which]


def _istio(pattern: str, principal: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return principal.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return principal.endswith(pattern[1:])
    return principal == pattern


_PART = st.text(alphabet="ab/:.", min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    issuers=st.lists(_PART, min_size=1, max_size=3, unique=True),
    token=st.tuples(st.integers(0, 2), _PART),
    pattern=st.one_of(
        _PART, _PART.map(lambda p: p + "*"), _PART.map(lambda p: "*" + p), st.just("*")
    ),
)
def test_request_principal_matches_as_istio_does(issuers, token, pattern) -> None:
    """`<iss>/<sub>` patterns, split on the workload's issuers, match exactly the tokens
    whose principal Istio's pattern matches (issuers and subjects may hold `/`)."""
    iss = issuers[token[0] % len(issuers)]
    claims = {"iss": iss, "sub": token[1]}
    built = _request_principal(pattern, tuple(issuers))
    assert _matches(built, claims) == _istio(pattern, f"{iss}/{token[1]}"), (pattern, claims)


@pytest.mark.parametrize(
    ("rule", "field", "words"),
    [
        ("{jwksUri: 'http://h/k'}", "jwtRules[0].issuer", "required"),
        ("{issuer: x, jwks: '{\"keys\": []}'}", "jwtRules[0].jwks", "no keys"),
        ("{issuer: x, jwks: 'not json'}", "jwtRules[0].jwks", "not JSON"),
        ('{issuer: x, jwks: \'{"keys": [{"kty": "RSA"}]}\'}', "jwtRules[0].jwks", '"n"'),
        ('{issuer: x, jwks: \'{"keys": [{"kty": "XX"}]}\'}', "jwtRules[0].jwks", "kty"),
        ("{issuer: x, jwksUri: 'ftp://h/k'}", "jwtRules[0].jwksUri", "http(s)"),
        ("{issuer: x, jwksUri: 'http://h/k', jwks: '{}'}", "jwtRules[0].jwks", "not both"),
        ("{issuer: plain-name}", "jwtRules[0].issuer", "OpenID"),
        ("{issuer: x, jwksUri: 'http://h/', fromHeaders: [{name: 'a b'}]}", "name", "header"),
        ("{issuer: x, jwksUri: 'http://h/', timeout: 0s}", "timeout", "positive"),
        ("{issuer: x, jwksUri: 'http://h/', nope: 1}", "jwtRules[0].nope", "unknown"),
    ],
)
def test_bad_rules_are_refused_with_their_field(rule: str, field: str, words: str) -> None:
    parsed = parse_file("ra.yaml", authn("a", f"[{rule}]"))
    errors = [i for i in parsed.issues if i.severity == "error"]
    assert len(errors) == 1, [str(e) for e in errors]
    assert errors[0].field.endswith(field) and words in errors[0].message, str(errors[0])
    assert errors[0].line >= 1


def test_jwks_problem_accepts_real_key_sets_and_the_fail_closed_one() -> None:
    assert jwks.problem(ISSUER.jwks()) is None
    assert jwks.problem(jwks.FAIL_CLOSED) is None
    assert "larger" in jwks.problem(" " * (jwks.MAX_BYTES + 1))
    assert "not JSON" in jwks.problem("[" * 100_000)  # deep nesting: an error, not a crash


def test_sources_are_uris_or_discovery() -> None:
    text = authn("a", "[{issuer: x, jwksUri: 'http://h/k'}, {issuer: 'https://i.example'}]")
    text += authn("b", f"[{{issuer: z, jwks: '{ISSUER.jwks()}'}}]")
    assert set(sources(config_from(text), 5.0)) == {
        "http://h/k",
        OPENID_PREFIX + "https://i.example",
    }


# ---- the fetcher ------------------------------------------------------------------------


async def _serve(routes: dict[str, object]) -> tuple[web.AppRunner, str]:
    async def handle(request: web.Request) -> web.Response:
        body = routes.get(request.path)
        if body is None:
            return web.Response(status=404)
        return web.Response(text=body() if callable(body) else str(body))

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


async def _until(condition, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_fetcher_fetches_refreshes_keeps_last_good_and_drops_unused() -> None:
    served = {"keys": ISSUER.jwks()}
    routes = {"/jwks.json": lambda: served["keys"]}
    runner, base = await _serve(routes)
    seen: list[dict] = []
    source = JwksSource(seen.append, refresh=0.1, retry=0.05)
    try:
        uri = f"{base}/jwks.json"
        source.track(config_from(authn("a", f"[{{issuer: x, jwksUri: '{uri}'}}]")))
        await source.first_tries(5)
        assert seen[-1] == {uri: ISSUER.jwks()}
        # A new key appears at the next refresh.
        other = Issuer("x", kid="second")
        served["keys"] = other.jwks()
        await _until(lambda: seen[-1] == {uri: other.jwks()})
        # A broken key set is not taken: the last good keys stay.
        served["keys"] = '{"keys": "nope"}'
        await _until(lambda: not source.report()[uri]["ok"])
        assert "not a usable key set" in source.report()[uri]["error"]
        assert source.keys == {uri: other.jwks()}
        # A source no longer named is dropped.
        source.track(config_from())
        assert seen[-1] == {} and source.report() == {}
    finally:
        await source.close()
        await runner.cleanup()


async def test_fetcher_uses_openid_discovery_and_reports_unreachable_sources() -> None:
    routes: dict[str, object] = {"/jwks": ISSUER.jwks()}
    runner, base = await _serve(routes)
    routes["/.well-known/openid-configuration"] = json.dumps({"jwks_uri": f"{base}/jwks"})
    seen: list[dict] = []
    source = JwksSource(seen.append, refresh=60, retry=0.05)
    try:
        dead = "http://127.0.0.1:1/jwks.json"
        config = config_from(
            authn("a", f"[{{issuer: '{base}'}}, {{issuer: y, jwksUri: '{dead}'}}]")
        )
        source.track(config)
        await source.first_tries(5)
        assert source.keys == {OPENID_PREFIX + base: ISSUER.jwks()}
        report = source.report()[dead]
        assert not report["ok"] and "GET http://127.0.0.1:1/jwks.json" in report["error"]
        await _until(lambda: source.report()[dead]["attempts"] >= 3)  # retried
    finally:
        await source.close()
        await runner.cleanup()


async def test_fetcher_reads_large_key_sets_and_survives_odd_ones() -> None:
    issuers = [Issuer("x", kid=f"k{i}") for i in range(3)]
    keys = [json.loads(i.jwks())["keys"][0] for i in issuers] * 150  # ~200 KB
    big = json.dumps({"keys": keys})
    routes: dict[str, object] = {"/big": big, "/odd": '{"keys":[{"kty":"EC","crv":["P-256"]}]}'}
    runner, base = await _serve(routes)
    source = JwksSource(lambda keys: None, refresh=60, retry=0.05)
    try:
        rules = f"[{{issuer: x, jwksUri: '{base}/big'}}, {{issuer: y, jwksUri: '{base}/odd'}}]"
        source.track(config_from(authn("a", rules)))
        await source.first_tries(5)
        assert len(big) > 150_000 and source.keys == {f"{base}/big": big}
        odd = source.report()[f"{base}/odd"]
        assert not odd["ok"] and "crv" in odd["error"]
        await _until(lambda: source.report()[f"{base}/odd"]["attempts"] >= 3)  # still tried
    finally:
        await source.close()
        await runner.cleanup()


def test_extension_providers_are_checked_at_load() -> None:
    head = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n"
        "data:\n  mesh: |\n    extensionProviders:\n"
    )
    for providers, field, words in (
        ("    - {name: a, envoyExtAuthzHttp: {port: 80}}\n", "service", "required"),
        ("    - {name: a, envoyExtAuthzGrpc: {service: x, port: 0}}\n", "port", "1-65535"),
        (
            "    - {name: a, envoyExtAuthzHttp: {service: x, port: 80, statusOnError: '299'}}\n",
            "statusOnError",
            "status code",
        ),
        (
            "    - {name: a, envoyExtAuthzHttp: {service: x, port: 80}}\n"
            "    - {name: a, envoyExtAuthzHttp: {service: y, port: 80}}\n",
            "extensionProviders[1].name",
            "another provider",
        ),
        ("    - {name: z, zipkin: {port: 9411}}\n", "zipkin.service", "required"),
        ("    - {name: z, datadog: {service: x, port: 1}}\n", "datadog", "not supported yet"),
        ("    - {name: l, envoyFileAccessLog: {}}\n", "envoyFileAccessLog.path", "required"),
        ("    - {name: n}\n", "extensionProviders[0]", "envoyExtAuthzHttp,"),
    ):
        parsed = parse_file("mesh.yaml", head + providers)
        errors = [i for i in parsed.issues if i.severity == "error"]
        assert len(errors) == 1, [str(e) for e in errors]
        assert errors[0].field.endswith(field) and words in errors[0].message, str(errors[0])
        assert errors[0].line >= 6
