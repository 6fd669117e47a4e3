"""proxy-status's and proxy-config's views (pure functions over the debug API's JSON)."""

from __future__ import annotations

from xds_server.proxy_config import matcher, route_rows
from xds_server.proxy_status import diff, rejections, table

SYNCZ = {
    "proxies": [
        {
            "proxy": "caller",
            "namespace": "default",
            "cluster": "caller",
            "api": "delta",
            "envoy_version": "1.40.0",
            "types": {
                "CDS": {"status": "SYNCED", "nacks": 0},
                "RDS": {
                    "status": "SYNCED",
                    "nacks": 1,
                    "nacked_version": "v9",
                    "nack_error": "route reviews.default.svc.cluster.local:9080: regex too big",
                },
            },
        }
    ]
}


def test_a_refused_type_shows_error_while_its_file_is_held_back() -> None:
    reason = SYNCZ["proxies"][0]["types"]["RDS"]["nack_error"]
    held = table(SYNCZ, "1.0", [reason]).splitlines()[1].split()
    assert held[2:4] == ["SYNCED", "ERROR"]  # the columns of the types sent: CDS, RDS
    # Fixed (nothing held any more), or held for another reason: SYNCED.
    assert table(SYNCZ, "1.0").splitlines()[1].split()[2:4] == ["SYNCED", "SYNCED"]
    assert table(SYNCZ, "1.0", ["other"]).splitlines()[1].split()[2:4] == ["SYNCED", "SYNCED"]


def test_a_rejection_names_its_files_and_the_yaml_behind_the_resource() -> None:
    issue = {
        "file": "/m/bad.yaml",
        "line": 3,
        "resource": "VirtualService default/x",
        "message": "Envoy rejected it",
    }
    sources = {
        "virtual_hosts": {
            "reviews.default.svc.cluster.local:9080": ["VirtualService default/x (/m/bad.yaml:1)"]
        }
    }
    lines = rejections(SYNCZ["proxies"][0], {"issues": [issue]}, sources)
    assert lines[0] == "RDS: last rejected version v9"
    assert "comes from: VirtualService default/x (/m/bad.yaml:1)" in lines[2]
    assert lines[3] == "  /m/bad.yaml:3: VirtualService default/x: Envoy rejected it"


def test_the_diff_is_empty_in_sync_and_names_both_sides_otherwise() -> None:
    def dump(timeout: str) -> dict:
        cluster = {"name": "c", "connect_timeout": timeout}
        return {
            "configs": [
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                    "dynamic_active_clusters": [{"cluster": cluster, "last_updated": "x"}],
                }
            ]
        }

    assert diff(dump("1s"), dump("1s"), "p") == ""
    changed = diff(dump("2s"), dump("1s"), "p")
    assert changed.startswith("--- p (sent by xds-server)\n+++ p (in Envoy)")
    assert '-   "connect_timeout": "2s"' in changed and '+   "connect_timeout": "1s"' in changed


def test_route_rows_show_paths_and_header_matches() -> None:
    routes = [
        {
            "name": "http_proxy",
            "virtual_hosts": [
                {
                    "name": "r:9080",
                    "domains": ["r"],
                    "routes": [
                        {"match": {"prefix": "/", "headers": [{"name": "end-user"}]}},
                        {"match": {"path": "/exact"}},
                    ],
                }
            ],
        }
    ]
    rows = route_rows(routes, matcher(), {"r:9080": ["VirtualService default/r (f:1)"]})
    assert [r[3] for r in rows[1:]] == ["/* [end-user]", "/exact"]
    assert {r[4] for r in rows[1:]} == {"default/r"}


def test_proxy_config_refuses_a_filter_its_kind_lacks() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "xds_server", "proxy-config", "routes", "p", "--fqdn", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--fqdn does not apply to routes (these do: --name)" in done.stderr
