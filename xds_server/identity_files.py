"""Each compose sidecar's identity, written when the mesh starts (`xds-server
sidecar-identities`, compose's one-shot `xds-identity` service).

A token must be signed with the server's key, which lives in its state volume, so it
cannot be in the bootstraps `inject` commits. This step reads each sidecar's bootstrap
(as inject wrote it: xDS over TLS, the root at /var/run/xds/root-cert.pem), adds the
workload's token to its xDS stream (gRPC initial metadata, as `bootstrap --token`
does), and writes it with the mesh root into a directory of that sidecar's own, which
compose mounts into that sidecar alone: no sidecar can read another's token. The files
belong to the sidecar's Envoy user and only it may read the token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from xds_server import node, tokens
from xds_server.ca import ROOT_CERT, CertificateAuthority

BOOTSTRAP, ROOT = "envoy.yaml", "root-cert.pem"


class IdentityFileError(ValueError):
    pass


@dataclass(frozen=True)
class Sidecar:
    name: str  # its bootstrap is <bootstraps>/<name>.yaml
    uid: int | None = None  # who runs its Envoy (the files become theirs)


def parse_sidecar(text: str) -> Sidecar:
    """NAME or NAME:UID."""
    name, sep, uid = text.partition(":")
    if not name or "/" in name or name.startswith(".") or (sep and not uid.isdigit()):
        raise IdentityFileError(f"{text!r}: want NAME or NAME:UID")
    return Sidecar(name, int(uid) if sep else None)


def with_token(bootstrap: dict, token: str) -> dict:
    """The bootstrap whose xDS stream carries `token`."""
    try:
        (service,) = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"]
    except (KeyError, TypeError, ValueError):
        raise IdentityFileError("not an xds-server bootstrap (one ADS gRPC service)") from None
    service["initial_metadata"] = [
        m for m in service.get("initial_metadata", []) if m.get("key") != "authorization"
    ] + [{"key": "authorization", "value": f"Bearer {token}"}]
    return bootstrap


def write(state_dir: Path, bootstraps: Path, out: Path, sidecars: list[Sidecar], ttl: int) -> None:
    """Write <out>/<name>/envoy.yaml (with its token) and root-cert.pem per sidecar."""
    key = tokens.load_or_create_key(state_dir)
    # The server's own root (made here when this runs first), as `serve` finds it.
    CertificateAuthority.load_or_create(state_dir / "ca")
    root = (state_dir / "ca" / ROOT_CERT).read_bytes()
    for sidecar in sidecars:
        source = bootstraps / f"{sidecar.name}.yaml"
        try:
            bootstrap = yaml.safe_load(source.read_text())
            metadata = bootstrap["node"]["metadata"]
            namespace = str(metadata.get(node.NAMESPACE, "default"))
            account = str(metadata.get(node.SERVICE_ACCOUNT, "default"))
        except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
            raise IdentityFileError(f"{source}: {exc}") from None
        token = tokens.issue(key, namespace, account, ttl)
        text = f"# {sidecar.name}: written by `xds-server sidecar-identities`; holds its token\n"
        text += yaml.safe_dump(with_token(bootstrap, token), sort_keys=False)
        directory = out / sidecar.name
        directory.mkdir(parents=True, exist_ok=True)
        _write(directory / ROOT, root, 0o644, sidecar.uid)
        _write(directory / BOOTSTRAP, text.encode(), 0o600, sidecar.uid)
        if sidecar.uid is not None:
            os.chown(directory, sidecar.uid, -1)
        os.chmod(directory, 0o755)


def _write(path: Path, data: bytes, mode: int, uid: int | None) -> None:
    """Replace `path` with `data`, never readable by others while it is written."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    if uid is not None:
        try:
            os.chown(temporary, uid, -1)
        except PermissionError:
            temporary.unlink()
            raise IdentityFileError(f"{path}: making it uid {uid}'s needs root") from None
    os.chmod(temporary, mode)
    os.replace(temporary, path)
