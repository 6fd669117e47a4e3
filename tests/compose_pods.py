"""Run a capture-injected compose file (`xds-server inject --mode capture`) as local pods,
without Docker: what compose would do with it, as far as the mesh can tell.

First the one-shot `xds-identity` runs (`xds-server sidecar-identities`, its volumes
mapped to directories here: the server's state, the bootstraps, the identities). Each
`<app>-pod` becomes a network namespace on the hub's bridge; its `<app>-init` runs
there first (the server's image: `xds-server ARGS`), then the app (its entrypoint and
command, which must run on this machine) and its sidecar (Envoy, as the uid its
ENVOY_UID names, with the bootstrap xds-identity wrote into the directory the sidecar
mounts: its token, and the mesh root, inlined here, where Envoy's uid cannot reach the
file). The control plane runs in the hub, serving `config_dir` over TLS on 15012; a DNS
server there stands for Docker's, answering the control plane's and the pods' names.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from xds_server.inject import IDENTITY_MOUNT, IDENTITY_SERVICE, ROLE, STATE_VOLUME
from xds_server.netns import join_bridge
from xds_server.pods import APP_UID, HUB_ADDRESS, Pod, PodMesh, as_user

PROBE = [sys.executable, "-m", "tests.capture_probe"]


def _local(argv: list[str]) -> list[str]:
    """A container's command as it runs here: the server image's `xds-server` and
    `python` are this Python's."""
    if argv[:1] == ["xds-server"]:
        return [sys.executable, "-m", "xds_server", *argv[1:]]
    if argv[:1] == ["python"]:
        return [sys.executable, *argv[1:]]
    return argv


def _argv(service: dict[str, Any], image_entrypoint: list[str]) -> list[str]:
    entrypoint = service.get("entrypoint", image_entrypoint)
    return _local([*entrypoint, *service.get("command", [])])


class ComposePods(PodMesh):
    def __init__(self, compose_file: Path, config_dir: Path, work_dir: Path, prefix: str):
        super().__init__(config_dir, work_dir, prefix, ["--restart-grace", "0"])
        self.compose_file = compose_file
        self.services: dict[str, Any] = yaml.safe_load(compose_file.read_text())["services"]

    def _role(self, name: str) -> str:
        return (self.services[name].get("labels") or {}).get(ROLE, "")

    def start(self) -> None:
        self._write_identities()
        self.start_hub()
        apps = [n for n in self.services if self._role(n) == "pod"]
        addresses = {"xds-server": HUB_ADDRESS}
        for index, pod in enumerate(apps):
            addresses[pod.removesuffix("-pod")] = f"198.18.0.{10 + index}"
        table = [f"{name}={address}" for name, address in addresses.items()]
        self.spawn(self.hub, "docker-dns", [*PROBE, "dns", HUB_ADDRESS, *table])
        for pod in apps:
            self._run_pod(pod.removesuffix("-pod"), addresses[pod.removesuffix("-pod")])

    def _mounts(self, service: dict[str, Any]) -> dict[str, Path]:
        """A service's volumes as directories here (named volume xds-state: the hub
        server's state directory, as serve_command sets it)."""
        out = {}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source == STATE_VOLUME:
                out[target] = self.work_dir / "state"
            else:
                out[target] = (self.compose_file.parent / source).resolve()
        return out

    def _write_identities(self) -> None:
        service = self.services[IDENTITY_SERVICE]
        mounts = self._mounts(service)
        argv = []
        for arg in _argv(service, ["xds-server"]):
            for target, local in mounts.items():
                if arg == target:
                    arg = str(local)
            argv.append(arg)
        subprocess.run(argv, check=True, timeout=60, capture_output=True)

    def _run_pod(self, app: str, address: str) -> None:
        namespace = self.namespace(app, nameserver=HUB_ADDRESS)
        join_bridge(namespace, address, self.hub, HUB_ADDRESS)
        # compose starts the init first and the others once it completed.
        init = self.services[f"{app}-init"]
        assert init["network_mode"] == f"service:{app}-pod"
        namespace.run(*_argv(init, ["xds-server"]))
        service = self.services[app]
        assert service["network_mode"] == f"service:{app}-pod"
        command = _argv(service, [])
        self.spawn(namespace, app, as_user(APP_UID, command) if self.apps_as_user else command)
        sidecar = self.services[f"{app}-sidecar"]
        assert sidecar["network_mode"] == f"service:{app}-pod"
        ((target, mounted),) = self._mounts(sidecar).items()
        assert sidecar["command"][2] == f"{target}/envoy.yaml" == f"{IDENTITY_MOUNT}/envoy.yaml"
        bootstrap = yaml.safe_load((mounted / "envoy.yaml").read_text())
        tls = bootstrap["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
        trusted = tls["common_tls_context"]["validation_context"]["trusted_ca"]
        name = Path(trusted.pop("filename")).name  # /var/run/xds/root-cert.pem
        trusted["inline_string"] = (mounted / name).read_text()
        bootstrap = yaml.safe_dump(bootstrap)
        uid = int(sidecar["environment"]["ENVOY_UID"])
        envoy = [self.envoy, "--config-yaml", bootstrap, *sidecar["command"][3:]]
        self.spawn(namespace, f"{app}-sidecar", as_user(uid, [*envoy, "--disable-hot-restart"]))
        self.pods[app] = Pod(app, namespace, address, captured=True)
