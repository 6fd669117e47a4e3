"""Debug and health HTTP endpoints (aiohttp, on the control plane's event loop)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from xds_server import provenance, status
from xds_server.ads.servicer import AdsServicer
from xds_server.analyze import analyze
from xds_server.ca import describe
from xds_server.config.store import ConfigStore
from xds_server.control_metrics import CONTENT_TYPE
from xds_server.mesh_graph import TrafficGraph
from xds_server.mesh_state import MeshState
from xds_server.proxy_status import dynamic_resources

STATIC = Path(__file__).resolve().parent / "static"


def make_app(
    mesh: MeshState,
    servicer: AdsServicer,
    store: ConfigStore,
    extra: Callable[[], dict[str, Any]] = dict,
    loop_report: Callable[[bool], dict[str, Any]] | None = None,
    admin: Callable[[str], bool] | None = None,
    metrics: Callable[[], bytes] | None = None,
) -> web.Application:
    """`extra` adds the control plane's own state (readiness, rollbacks, watcher) to
    syncz and configz. With `admin` (a check of a bearer token), /debug/ answers only
    requests that carry one it accepts: every proxy's config is in there."""

    @web.middleware
    async def require_admin(request: web.Request, handler):
        if admin is not None and request.path.startswith("/debug/"):
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not admin(token.strip()):
                return web.json_response(
                    {
                        "error": "the debug API needs an admin token (xds-server token "
                        "--namespace istio-system --service-account xds-admin)"
                    },
                    status=401,
                )
        return await handler(request)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if mesh.ready:
            return web.Response(text="ready\n")
        return web.Response(text="loading the configuration\n", status=503)

    async def syncz(_: web.Request) -> web.Response:
        body = status.syncz(servicer.latest_streams(), mesh.generation)
        return web.json_response({**body, **extra()})

    async def config_dump(request: web.Request) -> web.Response:
        node_id = request.query.get("proxy", "")
        info = servicer.latest_streams().get(node_id)
        if info is None:
            return web.json_response({"error": f"proxy {node_id!r} is not connected"}, status=404)
        return web.json_response(status.config_dump(info))

    async def configz(_: web.Request) -> web.Response:
        state = store.state  # one decision of the store, read once
        snapshot = state.snapshot
        digests = state.digests
        return web.json_response(
            {
                "version": snapshot.version,
                "generation": mesh.generation,
                "pushed_version": mesh.pushed_config_version,
                "config_generation": mesh.config_generation,
                "last_changes": [str(c) for c in state.changes[:100]],
                "files": {name: digests[name] for name in sorted(digests)},
                "accepted": {
                    name: parsed.digest for name, parsed in sorted(state.accepted.items())
                },
                "resources": [
                    {
                        "kind": r.kind,
                        "namespace": r.namespace,
                        "name": r.name,
                        "origin": str(r.origin),
                    }
                    for r in snapshot.resources
                ],
                "issues": [issue.as_dict() for issue in state.all_issues()],
                "settling": sorted(state.settling),
                "held_by_envoy": sorted(store.rejected),
                # Envoy's reason for each file held back (proxy-status's ERROR).
                "held_reasons": {name: r.message for name, r in sorted(store.rejected.items())},
                **extra(),
            }
        )

    async def provenancez(request: web.Request) -> web.Response:
        """Which YAML resources (file:line) made each resource sent to a proxy."""
        node_id = request.query.get("proxy", "")
        proxy = next((p for p in mesh.proxies() if p.node_id == node_id), None)
        info = servicer.latest_streams().get(node_id)
        if proxy is None or info is None:
            return web.json_response({"error": f"proxy {node_id!r} is not connected"}, status=404)
        sent = status.config_dump(info)
        resources = dynamic_resources(sent)
        vhosts = [
            vhost["name"]
            for route in resources["routes"].values()
            for vhost in route.get("virtual_hosts", [])
        ]
        return web.json_response(
            provenance.for_proxy(mesh.config, proxy, sorted(resources["clusters"]), vhosts)
        )

    graph = TrafficGraph()

    async def graphz(_: web.Request) -> web.Response:
        """Who calls which service, from the proxies' own Istio metrics."""
        admins = [(n, info.admin) for n, info in servicer.latest_streams().items()]
        return web.json_response(await graph.poll(admins))

    async def page(_: web.Request) -> web.Response:
        """The live mesh page: proxies, config issues, traffic (static/mesh.html)."""
        return web.FileResponse(STATIC / "mesh.html")

    async def analyzez(_: web.Request) -> web.Response:
        """`xds-server analyze` on the configuration in force."""
        state = store.state
        found = analyze(state.snapshot, state.accepted, state.all_issues())
        return web.json_response([m.as_dict() for m in found])

    async def certz(_: web.Request) -> web.Response:
        """What may be shown of the CA's root and each proxy's current certificate:
        subject, SPIFFE ID, serial, validity. Never a key."""
        if servicer.identity is None:
            return web.json_response({"error": "no certificate authority"}, status=404)
        identity = servicer.identity
        return web.json_response(
            {
                "root": describe(identity.ca.root_pem),
                "proxies": {
                    node_id: {
                        "certificate": describe(issued.chain_pem)[0],
                        "issued": identity.issued[node_id],
                    }
                    for node_id, issued in sorted(identity.current.items())
                },
            }
        )

    async def loopz(request: web.Request) -> web.Response:
        if loop_report is None:
            return web.json_response({"error": "no loop monitor"}, status=404)
        return web.json_response(loop_report(request.query.get("reset") == "1"))

    async def prometheus(_: web.Request) -> web.Response:
        """The control plane's metrics (xds_server.control_metrics), as istiod's /metrics."""
        if metrics is None:
            return web.Response(status=404, text="no metrics\n")
        return web.Response(body=metrics(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application(middlewares=[require_admin])
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/debug/syncz", syncz)
    app.router.add_get("/debug/config_dump", config_dump)
    app.router.add_get("/debug/configz", configz)
    app.router.add_get("/debug/loopz", loopz)
    app.router.add_get("/debug/certz", certz)
    app.router.add_get("/debug/analyze", analyzez)
    app.router.add_get("/debug/provenance", provenancez)
    app.router.add_get("/debug/graph", graphz)
    app.router.add_get("/", page)
    app.router.add_static("/static", STATIC)
    return app
