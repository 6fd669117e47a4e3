"""Loading the config directory: typed parsing, file:line errors, last good version."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers import service_yaml
from translators import model
from xds_server.config.loader import parse_file
from xds_server.config.schema import parse_duration
from xds_server.config.store import ConfigStore

SEED = Path(__file__).resolve().parents[1] / "examples" / "seed"
VS = """apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination:
        host: reviews
        subset: %s
"""


def errors(parsed):
    return [str(i) for i in parsed.issues if i.severity == "error"]


def test_seed_missing_hosts_is_refused_with_file_line_resource_and_field():
    text = (SEED / "bad" / "missing-hosts.yaml").read_text()
    parsed = parse_file("bad/missing-hosts.yaml", text)
    (issue,) = [i for i in parsed.issues if i.severity == "error"]
    assert issue.file == "bad/missing-hosts.yaml"
    assert issue.line == 9  # the spec: line of the resource
    assert issue.resource == "VirtualService default/reviews"
    assert issue.field == "spec.hosts"
    assert str(issue).startswith("bad/missing-hosts.yaml:9: error: VirtualService default/reviews")


def test_seed_traffic_examples_parse():
    for name in (
        "01-traffic-split-reviews",
        "05-canary-helloworld",
        "06-content-routing-reviews",
        "19-exercise-canary-my-app",
        "09-lb-round-robin",
    ):
        parsed = parse_file(name, (SEED / f"{name}.yaml").read_text())
        assert parsed.ok, errors(parsed)
        assert len(parsed.resources) == 1


def test_camel_and_snake_case_both_parse():
    camel = parse_file(
        "a",
        VS.replace(
            "  - route:",
            "  - match:\n    - ignoreUriCase: true\n      queryParams: {a: {exact: b}}\n    route:",
        )
        % "v1",
    )
    snake = parse_file(
        "b",
        VS.replace(
            "  - route:",
            "  - match:\n    - ignore_uri_case: true\n"
            "      query_params: {a: {exact: b}}\n    route:",
        )
        % "v1",
    )
    assert camel.ok and snake.ok
    assert camel.resources[0].spec == snake.resources[0].spec


def test_unknown_field_names_its_line_and_path():
    text = VS.replace("        subset: %s", "        subsett: v1")
    (issue,) = parse_file("vs.yaml", text).issues
    assert (issue.line, issue.field) == (11, "spec.http[0].route[0].destination.subsett")
    assert "unknown field" in issue.message


DIRECT = """apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: teapot}
spec:
  hosts: [teapot]
  http:
  - directResponse:
      status: 418
      body: {bytes: %s}
"""


def test_a_direct_response_body_in_bytes_is_base64_as_kubernetes_writes_it():
    parsed = parse_file("vs.yaml", DIRECT % "aGVsbG8=")
    assert errors(parsed) == []
    (vs,) = parsed.resources
    assert vs.spec.http[0].direct_response.body.bytes == b"hello"
    (issue,) = parse_file("vs.yaml", DIRECT % "not*base64").issues
    assert (issue.line, issue.field) == (9, "spec.http[0].directResponse.body.bytes")
    assert "base64" in issue.message


def test_an_integer_out_of_range_names_its_field():
    text = DIRECT.replace("status: 418", "status: 99999999999") % "aGVsbG8="
    (issue,) = parse_file("vs.yaml", text).issues
    assert (issue.line, issue.field) == (8, "spec.http[0].directResponse.status")
    assert "out of range" in issue.message


def test_a_field_written_in_both_spellings_is_refused_not_merged():
    text = VS.replace(
        "  hosts: [reviews]", "  hosts: [reviews]\n  exportTo: [.]\n  export_to: ['*']"
    )
    (issue,) = parse_file("vs.yaml", text % "v1").issues
    assert (issue.line, issue.field) == (8, "spec.export_to")
    assert "same field" in issue.message


def test_numbers_that_are_not_finite_are_refused():
    text = VS % "v1" + "    mirrorPercentage: {value: .nan}\n"
    text = text.replace("  - route:", "  - mirror: {host: reviews}\n    route:")
    (issue,) = parse_file("vs.yaml", text).issues
    assert issue.field == "spec.http[0].mirrorPercentage.value"
    assert "finite" in issue.message


def test_semantic_errors_name_field_and_line():
    text = (
        VS.replace("        subset: %s", "        subset: v1\n      weight: 120")
        + "  - match:\n    - headers:\n        cookie: {regex: '(?=x)'}\n    route:\n"
        "    - destination: {host: reviews}\n"
    )
    found = {(i.line, i.field) for i in parse_file("vs.yaml", text).issues}
    assert (12, "spec.http[0].route[0].weight") in found
    assert (15, "spec.http[1].match[0].headers.cookie.regex") in found


def test_durations_accept_istio_forms():
    assert parse_duration("3m") == 180
    assert parse_duration("1h30m") == 5400
    assert parse_duration("250ms") == 0.25
    parsed = parse_file(
        "vs.yaml", VS.replace("  - route:", "  - timeout: 1m30s\n    route:") % "v1"
    )
    assert parsed.resources[0].spec.http[0].timeout.seconds == 90
    bad = parse_file("vs.yaml", VS.replace("  - route:", "  - timeout: soon\n    route:") % "v1")
    assert "invalid duration" in bad.issues[0].message


def test_unknown_kind_is_reported_and_skipped():
    text = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec: {}\n"
    parsed = parse_file("w.yaml", text)
    assert parsed.ok and not parsed.resources
    assert parsed.issues[0].severity == "warning" and "Widget" in parsed.issues[0].message


def test_namespace_defaults_to_default_and_multi_document(tmp_path: Path):
    parsed = parse_file("s.yaml", service_yaml("reviews", "ratings"))
    assert {(r.kind, r.namespace) for r in parsed.resources} == {
        ("Service", "default"),
        ("DestinationRule", "default"),
    }
    assert len(parsed.resources) == 4


def test_yaml_syntax_error_names_the_line():
    (issue,) = parse_file("x.yaml", "a: 1\nb: [1, 2\nc: 3\n").issues
    assert issue.file == "x.yaml" and issue.line >= 2 and "invalid YAML" in issue.message


def test_invalid_edit_keeps_last_valid_version_of_file(tmp_path: Path):
    (tmp_path / "services.yaml").write_text(service_yaml("reviews"))
    (tmp_path / "vs.yaml").write_text(VS % "v1")
    store = ConfigStore(tmp_path)
    first = store.load_all()
    (tmp_path / "vs.yaml").write_text(VS.replace("  hosts: [reviews]\n", "") % "v2")
    second = store.update([tmp_path / "vs.yaml"])
    assert second.version == first.version
    assert second.of_kind(model.VIRTUAL_SERVICE)[0].spec.http[0].route[0].destination.subset == "v1"
    assert any("spec.hosts" in str(i) for i in store.all_issues())
    (tmp_path / "vs.yaml").write_text(VS % "v3")
    third = store.update([tmp_path / "vs.yaml"])
    assert third.of_kind(model.VIRTUAL_SERVICE)[0].spec.http[0].route[0].destination.subset == "v3"
    assert not [i for i in store.all_issues() if i.severity == "error"]


def test_deleted_file_is_dropped(tmp_path: Path):
    (tmp_path / "vs.yaml").write_text(VS % "v1")
    store = ConfigStore(tmp_path)
    assert store.load_all().of_kind(model.VIRTUAL_SERVICE)
    (tmp_path / "vs.yaml").unlink()
    assert not store.update([tmp_path / "vs.yaml"]).of_kind(model.VIRTUAL_SERVICE)


def test_mesh_config_from_istio_configmap(tmp_path: Path):
    shutil.copy(SEED / "14-mesh-config-tracing.yaml", tmp_path)
    (tmp_path / "m.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n"
        "data:\n  mesh: |\n    connectTimeout: 2s\n"
    )
    store = ConfigStore(tmp_path)
    store.load_all()
    assert any("mesh config also defined" in str(i) for i in store.all_issues())
    (tmp_path / "14-mesh-config-tracing.yaml").unlink()
    snapshot = store.load_all()
    assert snapshot.mesh.connect_timeout.seconds == 2
    assert snapshot.mesh.root_namespace == "istio-system"


def test_mesh_config_error_points_into_the_embedded_yaml(tmp_path: Path):
    text = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n"
        "data:\n  mesh: |\n    trustDomain: a\n    connectTimeot: 2s\n"
    )
    (issue,) = parse_file("m.yaml", text).issues
    assert issue.line == 7 and issue.field == "data.mesh.connectTimeot"
