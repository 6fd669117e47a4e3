"""`xds-server inject`: a docker-compose file with an Envoy sidecar next to each app, as
`linkerd inject` does for Kubernetes manifests.

Each selected service gets a `<name>-sidecar` service sharing its network namespace
(`network_mode: service:<name>`, as containers of one pod), with a bootstrap written from
the service's labels (`app`, `version`; `app` defaults to the service's name) and its
container ports; the app is pointed at its sidecar as its HTTP proxy (proxy mode). A
control plane service is added unless one is there. Services opt out with the label
`xds-server.io/inject: "false"` (or Istio's `sidecar.istio.io/inject: "false"`), and
services that already share another's network namespace are left alone. What inject adds
is labelled `xds-server.io/role`, so injecting an injected file changes nothing.

In capture mode (`--mode capture`) an app becomes a pod, as Kubernetes runs one: a
`<name>-pod` service (the pause image) owns the network namespace and takes the app's
ports, networks and name (a network alias); `<name>-init` (the server's image, NET_ADMIN)
sets the capture rules there, as istio-init does, and must finish before the app and its
sidecar start in that namespace; the sidecar runs as uid 1337, the rules' exception, in
REDIRECT mode. The app needs no proxy settings: `http://reviews:9080/` is captured, DNS
included.

Sidecars speak xDS over TLS (the server's 15012) and each presents its workload's token.
Tokens are signed with the server's key, in its state volume, so they are made when the
mesh starts: the one-shot `xds-identity` service (the server's image, `xds-server
sidecar-identities`) writes each sidecar's bootstrap with its token, and the mesh root,
into `<identities dir>/<sidecar>/`, which only that sidecar mounts (at /var/run/xds). It
runs before the control plane (which then finds the root and key it made) and before
every sidecar.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from xds_server.bootstrap import BootstrapOptions, render

ROLE = "xds-server.io/role"
OPT_OUT = ("xds-server.io/inject", "sidecar.istio.io/inject")
TCP_PORTS = "xds-server.io/tcp-ports"
ENVOY_IMAGE = "envoyproxy/envoy:v1.40.0"
POD_IMAGE = "registry.k8s.io/pause:3.10"  # holds a pod's network namespace, as in Kubernetes
PROXY = "http://127.0.0.1:15001"
MODES = ("proxy", "capture")
# What belongs to a container's network namespace: in capture mode it moves to the pod
# (compose refuses these beside `network_mode`).
NETWORK_KEYS = (
    "ports",
    "expose",
    "networks",
    "hostname",
    "domainname",
    "dns",
    "dns_search",
    "dns_opt",
    "extra_hosts",
    "mac_address",
    "links",
    "external_links",
)
CAPTURE_RULES = ["iptables", "--apply", "--redirect-dns", "--capture-all-dns"]
PROXY_UID = "1337"  # the rules' exception (istio-iptables -u)
POD_FOR = "xds-server.io/pod-for"
IDENTITY_SERVICE = "xds-identity"
# On a service that runs Envoy from <bootstrap dir>/<value>.yaml itself (a gateway): give
# it its token as the sidecars get theirs, in <identities dir>/<value>/.
BOOTSTRAP_LABEL = "xds-server.io/bootstrap"
ENVOY_IMAGE_UID = "101"  # the envoy image's user, when ENVOY_UID does not say
IDENTITY_MOUNT = "/var/run/xds"  # a sidecar's own directory: bootstrap, token, root
STATE_VOLUME, STATE_MOUNT = "xds-state", "/var/lib/xds-server"
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class InjectError(ValueError):
    """The compose file cannot be injected; `path` is the field at fault (for its line),
    and the message names it."""

    def __init__(self, path: tuple[str, ...], problem: str) -> None:
        super().__init__(f"{'.'.join(path)}: {problem}" if path else problem)
        self.path = path


@dataclass(frozen=True)
class InjectOptions:
    namespace: str = "default"
    control_plane: str = "xds-server"  # the control plane's service name (and DNS name)
    server_image: str = "${XDS_SERVER_IMAGE:-xds-server}"  # built from the Dockerfile
    config_dir: str = "./mesh"  # mounted into the control plane
    bootstrap_dir: str = "./envoy-configs"  # where the sidecars' bootstraps are written
    # Where xds-identity writes each sidecar's bootstrap with its token (made at `up`).
    identities_dir: str = "./.xds-identities"
    envoy_image: str = ENVOY_IMAGE
    pod_image: str = POD_IMAGE
    mode: str = "proxy"  # or "capture"
    # The mesh config's proxyStatsMatcher as Envoy's (bootstrap.stats_matcher_of).
    stats_matcher: Any = None


@dataclass
class Injected:
    """The injected compose document, the bootstraps to write (file name -> text) and,
    for --emit-services, a Service per app (file name -> YAML)."""

    compose: dict[str, Any]
    bootstraps: dict[str, str] = field(default_factory=dict)
    services: dict[str, str] = field(default_factory=dict)


def _labels(service: Mapping[str, Any], name: str) -> dict[str, str]:
    raw = service.get("labels") or {}
    if isinstance(raw, list):
        out = {}
        for item in raw:
            key, _, value = str(item).partition("=")
            out[key] = value
        return out
    if not isinstance(raw, Mapping):
        raise InjectError(("services", name, "labels"), "a map or a list of KEY=VALUE")
    return {str(k): "" if v is None else str(v) for k, v in raw.items()}


def _container_port(entry: Any, name: str, key: str) -> int | None:
    """The container side of a `ports` or `expose` entry; None for UDP."""
    if isinstance(entry, Mapping):
        if str(entry.get("protocol", "tcp")).lower() != "tcp":
            return None
        entry = entry.get("target")
    text = str(entry)
    if text.endswith("/udp"):
        return None
    text = text.removesuffix("/tcp").rpartition(":")[2]
    if "-" in text or not text.isdigit() or not 0 < int(text) < 65536:
        raise InjectError(("services", name, key), f"{entry!r} is not one container port")
    return int(text)


def _declared_ports(service: Mapping[str, Any], name: str) -> dict[int, str]:
    """Container port -> the key declaring it first (`expose` or `ports`)."""
    ports: dict[int, str] = {}
    for key in ("expose", "ports"):
        for entry in service.get(key) or ():
            port = _container_port(entry, name, key)
            if port is not None:
                ports.setdefault(port, key)
    return ports


def app_ports(service: Mapping[str, Any], name: str) -> list[int]:
    """The ports the app listens on: `expose` and the container side of `ports`."""
    return list(_declared_ports(service, name))


def _environment(service: dict[str, Any], name: str, extra: Mapping[str, str]) -> None:
    env = service.get("environment")
    if env is None:
        service["environment"] = dict(extra)
    elif isinstance(env, Mapping):
        service["environment"] = {**env, **extra}
    elif isinstance(env, list):
        kept = [e for e in env if str(e).partition("=")[0] not in extra]
        service["environment"] = kept + [f"{k}={v}" for k, v in extra.items()]
    else:
        raise InjectError(("services", name, "environment"), "a map or a list of KEY=VALUE")


def _pod_of(services: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    """The pod an earlier capture-mode injection made for app `name`, if any."""
    pod = services.get(f"{name}-pod")
    if isinstance(pod, Mapping) and _labels(pod, f"{name}-pod").get(POD_FOR) == name:
        return pod
    return None


def _selected(name: str, service: Any, services: Mapping[str, Any]) -> bool:
    if not isinstance(service, Mapping):
        raise InjectError(("services", name), "a map")
    labels = _labels(service, name)
    if ROLE in labels:
        return False
    if "network_mode" in service:  # another's namespace: only its own pod's (injected)
        return service["network_mode"] == f"service:{name}-pod" and bool(_pod_of(services, name))
    return all(labels.get(key, "").lower() != "false" for key in OPT_OUT)


def inject(document: Any, options: InjectOptions = InjectOptions()) -> Injected:
    """The injected form of a parsed compose file (which is not changed)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("services"), Mapping):
        raise InjectError(("services",), "a compose file needs a `services` map")
    compose = copy.deepcopy(dict(document))
    services: dict[str, Any] = compose["services"]
    out = Injected(compose)
    apps = [str(n) for n, service in services.items() if _selected(str(n), service, services)]
    planes = [
        str(n) for n, s in services.items() if _labels(s, str(n)).get(ROLE) == "control-plane"
    ]
    # The control plane the user labelled, else ours (added below): sidecars ask it.
    control_plane = planes[0] if planes else options.control_plane
    options = dataclasses.replace(options, control_plane=control_plane)
    for name in apps:
        _check_app(services, name, options.mode)
    if apps:
        other = services.get(IDENTITY_SERVICE)
        if other is not None and _labels(other, IDENTITY_SERVICE).get(ROLE) != "identity":
            raise InjectError(
                ("services", IDENTITY_SERVICE),
                "inject adds a service of this name (it writes the sidecars' tokens): "
                "rename this one",
            )
    kept_apps: dict[str, list[int]] = {}
    tcp_labels: dict[str, set[str]] = {}
    for name in apps:
        service = services[name]
        labels = _labels(service, name)
        mesh_labels = {"app": labels.get("app") or name}
        if labels.get("version"):
            mesh_labels["version"] = labels["version"]
        declared = _declared_ports(_pod_of(services, name) or service, name)
        ports = list(declared)
        capture = options.mode == "capture"
        if capture:
            taken = set(SIDECAR_PORTS)
            what = ", ".join(str(p) for p in SIDECAR_PORTS)
        else:
            taken = {15000, 15001, *range(15006, 15006 + len(ports))}
            what = "15000, 15001, 15006 up"
        clash = [p for p in ports if p in taken]
        if clash:
            raise InjectError(
                ("services", name, declared[clash[0]]), f"the sidecar's ports ({what}) are taken"
            )
        bootstrap = f"{name}.yaml"
        out.bootstraps[bootstrap] = render(
            BootstrapOptions(
                node_id=name,
                namespace=options.namespace,
                labels=mesh_labels,
                service_account=mesh_labels["app"],
                app_ports=ports,
                xds_address=f"{options.control_plane}:15012",
                xds_root_cert=f"{IDENTITY_MOUNT}/root-cert.pem",
                bind_address="0.0.0.0",  # other containers reach the app through it
                interception_mode="REDIRECT" if capture else "NONE",
                stats_matcher=options.stats_matcher,
            )
        )
        sidecar: dict[str, Any] = {
            "image": options.envoy_image,
            "network_mode": f"service:{name}",
            "depends_on": {
                IDENTITY_SERVICE: _completed(),
                options.control_plane: {"condition": "service_started"},
            },
            "restart": "unless-stopped",
            # Its own directory only: its bootstrap with its token, and the mesh root.
            "volumes": [f"{options.identities_dir}/{name}:{IDENTITY_MOUNT}:ro"],
            "command": ["envoy", "-c", f"{IDENTITY_MOUNT}/envoy.yaml", "--concurrency", "1"],
            # The image's entrypoint switches to this uid (the capture rules' exception),
            # and the identity files are that uid's.
            "environment": {"ENVOY_UID": PROXY_UID, "ENVOY_GID": PROXY_UID},
            "labels": {ROLE: "sidecar", "xds-server.io/sidecar-for": name},
        }
        if "profiles" in service:  # started with the app, or not at all
            sidecar["profiles"] = list(service["profiles"])
        if capture:
            _make_pod(services, name, sidecar, options)
        else:
            _environment(
                service,
                name,
                {
                    "HTTP_PROXY": PROXY,
                    "http_proxy": PROXY,
                    "NO_PROXY": "localhost,127.0.0.1",
                    "no_proxy": "localhost,127.0.0.1",
                },
            )
        services[f"{name}-sidecar"] = sidecar
        kept_apps.setdefault(mesh_labels["app"], [])
        tcp = tcp_labels.setdefault(mesh_labels["app"], set())  # any version's label counts
        tcp.update(p.strip() for p in labels.get(TCP_PORTS, "").split(",") if p.strip())
        for port in ports:
            if port not in kept_apps[mesh_labels["app"]]:
                kept_apps[mesh_labels["app"]].append(port)
        out.services[mesh_labels["app"]] = _service_yaml(
            mesh_labels["app"], options.namespace, kept_apps[mesh_labels["app"]], tcp
        )
    own = _own_bootstraps(services)
    if apps:
        entries = [f"{name}:{PROXY_UID}" for name in apps] + [e for _, e in own]
        services[IDENTITY_SERVICE] = _identity_service(entries, options)
        for name, _ in own:
            service = services[name]
            service["depends_on"] = {**_depends_on(service, name), IDENTITY_SERVICE: _completed()}
    if apps and planes:  # the user's control plane waits for the state it shares
        plane = services[control_plane]
        plane["depends_on"] = {**_depends_on(plane, control_plane), IDENTITY_SERVICE: _completed()}
    if apps and not planes and options.control_plane not in services:
        services[options.control_plane] = {
            "image": options.server_image,
            "command": [  # after the image's entrypoint, `xds-server`
                "serve",
                "--config-dir",
                "/mesh",
                "--xds-address",
                "0.0.0.0",
                "--debug-address",
                "0.0.0.0",
                "--state-dir",
                STATE_MOUNT,
                # Every proxy here has its token and speaks TLS: no other may connect.
                "--require-tokens",
                "--xds-port",
                "off",
            ],
            "volumes": [f"{options.config_dir}:/mesh:ro", f"{STATE_VOLUME}:{STATE_MOUNT}"],
            "ports": ["127.0.0.1:15014:15014"],  # the debug API: this host only
            "depends_on": {IDENTITY_SERVICE: _completed()},
            "labels": {ROLE: "control-plane"},
        }
        joined = _networks_of(services, apps)
        if joined != ["default"]:  # every sidecar must reach it
            services[options.control_plane]["networks"] = joined
    if apps:
        volumes = compose.setdefault("volumes", {}) or {}
        volumes.setdefault(STATE_VOLUME, None)
        compose["volumes"] = volumes
    return out


def _completed() -> dict[str, str]:
    return {"condition": "service_completed_successfully"}


def _own_bootstraps(services: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(service, `stem:uid`) of the services labelled BOOTSTRAP_LABEL."""
    out = []
    for name, service in services.items():
        stem = _labels(service, str(name)).get(BOOTSTRAP_LABEL)
        if not stem:
            continue
        if not _NAME.fullmatch(stem):
            raise InjectError(
                ("services", str(name), "labels", BOOTSTRAP_LABEL),
                "a bootstrap's file name: lower case letters, digits and '-'",
            )
        environment = service.get("environment") or {}
        uid = environment.get("ENVOY_UID") if isinstance(environment, Mapping) else None
        out.append((str(name), f"{stem}:{uid or ENVOY_IMAGE_UID}"))
    return out


def _identity_service(entries: Sequence[str], options: InjectOptions) -> dict[str, Any]:
    """The one-shot service that writes each sidecar's bootstrap with its token."""
    return {
        "image": options.server_image,
        "command": [  # after the image's entrypoint, `xds-server`
            "sidecar-identities",
            *("--state-dir", STATE_MOUNT, "--bootstraps", "/bootstraps"),
            *("--out", "/identities"),
            *entries,
        ],
        "volumes": [
            f"{STATE_VOLUME}:{STATE_MOUNT}",
            f"{options.bootstrap_dir}:/bootstraps:ro",
            f"{options.identities_dir}:/identities",
        ],
        "restart": "no",
        "labels": {ROLE: "identity"},
    }


def _check_app(services: Mapping[str, Any], name: str, mode: str) -> None:
    """Refuse what inject would silently break: a name it cannot derive others from, a
    name it would take from another service, an app injected in the other mode, and
    replicas (one sidecar per container)."""
    service = services[name]
    if not _NAME.fullmatch(name):
        raise InjectError(
            ("services", name), "a sidecar's name must be lower case letters, digits and '-'"
        )
    added = ("sidecar", "pod", "init") if mode == "capture" else ("sidecar",)
    for part in added:
        other = services.get(f"{name}-{part}")
        if other is not None and _labels(other, f"{name}-{part}").get(ROLE) != part:
            raise InjectError(
                ("services", f"{name}-{part}"),
                f"inject names {name}'s {part} so; rename this service (or opt {name} out "
                'with the label xds-server.io/inject: "false")',
            )
    sidecar = services.get(f"{name}-sidecar")
    captured = isinstance(sidecar, Mapping) and sidecar.get("network_mode") == f"service:{name}-pod"
    if sidecar is not None and captured != (mode == "capture"):
        was = "capture" if captured else "proxy"
        raise InjectError(
            ("services", name),
            f"injected with --mode {was} already; inject the original file to change modes",
        )
    deploy = service.get("deploy") if isinstance(service.get("deploy"), Mapping) else {}
    for path, count in (
        (("scale",), service.get("scale")),
        (("deploy", "replicas"), deploy.get("replicas")),
    ):
        if isinstance(count, int) and count > 1:
            raise InjectError(
                ("services", name, *path),
                "one sidecar serves one container: run replicas as services of their own",
            )
    if mode == "capture" and "extends" in service:
        raise InjectError(
            ("services", name, "extends"),
            "capture mode moves the network settings to a pod, which extends would bring "
            "back: write the service out in full",
        )


def _networks_of(services: Mapping[str, Any], apps: Sequence[str]) -> list[str]:
    """The networks the apps' sidecars are on (their pods' in capture mode)."""
    found: list[str] = []
    for name in apps:
        holder = _pod_of(services, name) or services[name]
        networks = holder.get("networks") or ["default"]
        for network in networks if isinstance(networks, list) else networks.keys():
            if str(network) not in found:
                found.append(str(network))
    return sorted(found)


# What a captured sidecar listens on in the pod: admin, outbound, inbound, DNS, health.
SIDECAR_PORTS = (15000, 15001, 15006, 15021, 15053, 15090)


def _depends_on(service: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A service's depends_on in the long form (conditions), whichever form it had."""
    found = service.get("depends_on") or {}
    if isinstance(found, list):
        return {str(n): {"condition": "service_started"} for n in found}
    if not isinstance(found, Mapping):
        raise InjectError(("services", name, "depends_on"), "a list or a map")
    return {str(n): dict(c or {"condition": "service_started"}) for n, c in found.items()}


def _aliased(networks: Any, name: str) -> dict[str, Any]:
    """The app's networks for its pod, each with the app's name as an alias, so other
    services still reach it by that name."""
    if networks is None:
        networks = ["default"]
    if isinstance(networks, list):
        networks = {str(n): None for n in networks}
    if not isinstance(networks, Mapping):
        raise InjectError(("services", name, "networks"), "a list or a map")
    out: dict[str, Any] = {}
    for network, settings in networks.items():
        settings = dict(settings or {})
        aliases = list(settings.get("aliases") or [])
        if name not in aliases:
            aliases.append(name)
        settings["aliases"] = aliases
        out[str(network)] = settings
    return out


def _rules_set() -> dict[str, str]:
    return {"condition": "service_completed_successfully"}


def _make_pod(
    services: dict[str, Any], name: str, sidecar: dict[str, Any], options: InjectOptions
) -> None:
    """Capture mode: `name` and its sidecar join `<name>-pod`'s network namespace, after
    `<name>-init` set the capture rules there."""
    app = services[name]
    pod, init = f"{name}-pod", f"{name}-init"
    if _pod_of(services, name) is None:  # else injected before: the pod is there
        holder: dict[str, Any] = {"image": options.pod_image, "restart": "unless-stopped"}
        for key in NETWORK_KEYS:
            if key in app:
                holder[key] = app.pop(key)
        holder["networks"] = _aliased(holder.get("networks"), name)
        holder["labels"] = {ROLE: "pod", POD_FOR: name}
        if "profiles" in app:
            holder["profiles"] = list(app["profiles"])
        services[pod] = holder
    services[init] = {
        "image": options.server_image,
        "network_mode": f"service:{pod}",
        "cap_add": ["NET_ADMIN", "NET_RAW"],
        "command": list(CAPTURE_RULES),  # after the image's entrypoint, `xds-server`
        "depends_on": [pod],
        "restart": "no",
        "labels": {ROLE: "init", "xds-server.io/init-for": name},
    }
    if "profiles" in app:
        services[init]["profiles"] = list(app["profiles"])
    app["network_mode"] = f"service:{pod}"
    app["depends_on"] = {**_depends_on(app, name), init: _rules_set()}
    sidecar["network_mode"] = f"service:{pod}"
    sidecar["depends_on"] = {init: _rules_set(), **sidecar["depends_on"]}


def _service_yaml(app: str, namespace: str, ports: list[int], tcp: set[str]) -> str:
    """A Service for `app`: its ports named by protocol (http unless listed as TCP in
    the xds-server.io/tcp-ports label), as Istio selects protocols by port name."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": app, "namespace": namespace},
            "spec": {
                "selector": {"app": app},
                "ports": [
                    {"name": f"{'tcp' if str(p) in tcp else 'http'}-{p}", "port": p} for p in ports
                ],
            },
        },
        sort_keys=False,
    )


_HEADERS = {
    "proxy": "# Injected by `xds-server inject`: each app has an Envoy sidecar in its network\n"
    "# namespace; injecting this file again changes nothing.\n",
    "capture": "# Injected by `xds-server inject --mode capture`: each app is a pod (<app>-pod\n"
    "# holds its network namespace, <app>-init sets the capture rules there, then the app\n"
    "# and its Envoy sidecar start in it); injecting this file again changes nothing.\n",
}


class _NoAliases(yaml.SafeDumper):
    """Writes a value shared by two places (a merge key's) out at each, so that reading
    the file again gives the same text."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(compose: Mapping[str, Any], mode: str = "proxy") -> str:
    body = yaml.dump(dict(compose), Dumper=_NoAliases, sort_keys=False, default_flow_style=False)
    return _HEADERS[mode] + body
