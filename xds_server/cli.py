"""The `xds-server` command: serve, validate, token, bootstrap, iptables, inject, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import logging
import math
import signal
import sys
import tomllib
from pathlib import Path

from xds_server.bootstrap import BootstrapOptions, render, stats_matcher_of
from xds_server.config.files import DEFAULT_MAX_BYTES
from xds_server.launcher import port_free


def _labels(text: str) -> dict[str, str]:
    labels = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"label {item!r} is not KEY=VALUE")
        labels[key] = value
    return labels


def _run_until_signal(coro_factory) -> int:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # SIGHUP too: closing the terminal stops the server as cleanly as Ctrl-C.
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            with contextlib.suppress(NotImplementedError, TypeError):
                loop.add_signal_handler(sig, stop.set)
        await coro_factory(stop)

    asyncio.run(main())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    config_dir = Path(args.config_dir)
    if not config_dir.is_dir():
        if config_dir.exists():
            print(f"error: --config-dir {config_dir}: not a directory", file=sys.stderr)
            return 2
        if not args.create_config_dir:
            print(
                f"error: --config-dir {config_dir}: no such directory "
                "(check the path, or pass --create-config-dir to start with an empty one)",
                file=sys.stderr,
            )
            return 2
        config_dir.mkdir(parents=True, exist_ok=True)
    if args.xds_port is None and args.xds_tls_port is None:
        print("error: --xds-port and --xds-tls-port are both off: no xDS", file=sys.stderr)
        return 2
    for flag, host, port in (
        ("--xds-port", args.xds_address, args.xds_port),
        ("--xds-tls-port", args.xds_address, args.xds_tls_port),
        ("--debug-port", args.debug_address, args.debug_port),
    ):
        if port and not port_free(host, port):
            print(
                f"error: {host}:{port} ({flag}) is in use (another xds-server running?); "
                f"choose another port with {flag}",
                file=sys.stderr,
            )
            return 2

    from xds_server.server import ServerOptions, serve

    options = ServerOptions(
        config_dir=config_dir,
        xds_address=args.xds_address,
        xds_port=args.xds_port,
        xds_tls_port=args.xds_tls_port,
        xds_tls_names=tuple(args.xds_tls_name),
        debug_address=args.debug_address,
        debug_port=args.debug_port,
        max_message_mb=args.max_message_mb,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        restart_grace_s=args.restart_grace,
        max_file_bytes=args.max_file_bytes,
        settle_ms=args.settle_ms,
        create_config_dir=args.create_config_dir,
        require_tokens=args.require_tokens,
        cert_lifetime_s=max(1.0, args.cert_lifetime),
        workload_key=args.workload_key,
        jwks_refresh_s=max(1.0, args.jwks_refresh),
        cacerts=Path(args.cacerts) if args.cacerts else None,
        debug_require_token=args.debug_require_token,
    )
    return _run_until_signal(lambda stop: serve(options, stop))


def cmd_cert(args: argparse.Namespace) -> int:
    """A workload's current certificate (or the root), from a running server's debug API,
    like `linkerd identity cert`."""
    import json
    import urllib.error
    import urllib.request

    url = f"{args.server.rstrip('/')}/debug/certz"
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (a URL the user gave)
            certz = json.load(response)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        print(f"xds-server cert: {url}: {exc}", file=sys.stderr)
        return 1
    if args.proxy is None:
        shown = certz["root"]
    elif args.proxy in certz["proxies"]:
        shown = [certz["proxies"][args.proxy]["certificate"]]
    else:
        known = ", ".join(certz["proxies"]) or "none"
        print(
            f"xds-server cert: {args.proxy} holds no certificate (proxies that do: {known})",
            file=sys.stderr,
        )
        return 1
    for cert in shown:
        for field in ("subject", "spiffe_id", "serial", "not_before", "not_after"):
            print(f"{field:>10}: {cert[field] or '-'}")
    return 0


def cmd_proxy_status(args: argparse.Namespace) -> int:
    """istioctl proxy-status: every proxy's sync state; with a proxy, what it holds."""
    from xds_server import proxy_status

    base = args.server.rstrip("/")
    try:
        syncz = proxy_status.get_json(f"{base}/debug/syncz", args.token)
        if args.proxy is None:
            configz = proxy_status.get_json(f"{base}/debug/configz", args.token)
            reasons = configz.get("held_reasons", {}).values()
            print(proxy_status.table(syncz, version(), reasons))
            return 0
        proxy = proxy_status.proxy_of(syncz, args.proxy)
        configz = proxy_status.get_json(f"{base}/debug/configz", args.token)
        sent = proxy_status.get_json(f"{base}/debug/config_dump?proxy={args.proxy}", args.token)
        sources = proxy_status.get_json(f"{base}/debug/provenance?proxy={args.proxy}", args.token)
    except proxy_status.DebugApiError as exc:
        print(f"xds-server proxy-status: {exc}", file=sys.stderr)
        return 1
    for kind, state in proxy["types"].items():
        sent_version, acked = state["sent_version"], state["acked_version"]
        print(f"{kind}: {state['status']} (sent {sent_version}, ACKed {acked})")
    for line in proxy_status.rejections(proxy, configz, sources):
        print(line)
    if not proxy.get("admin"):
        print("(its bootstrap names no admin address: cannot compare with the Envoy)")
        return 0
    try:
        held = proxy_status.get_json(f"http://{proxy['admin']}/config_dump", timeout=5)
    except proxy_status.DebugApiError as exc:
        print(f"(cannot read the Envoy's config: {exc})")
        return 0
    difference = proxy_status.diff(sent, held, args.proxy)
    print(difference if difference else "Clusters, listeners and routes match what was sent.")
    return 0


# The filters each kind of proxy-config has (istioctl's).
_PROXY_CONFIG_FILTERS = {
    "clusters": ("fqdn", "port", "subset", "direction", "name"),
    "listeners": ("port", "name"),
    "routes": ("name",),
    "endpoints": ("name",),
    "secrets": ("name",),
    "all": ("name",),
}


def cmd_proxy_config(args: argparse.Namespace) -> int:
    """istioctl proxy-config: one proxy's clusters, listeners, routes, endpoints or secrets
    as it holds them (its Envoy's admin API), else as the server sent them."""
    from xds_server import proxy_config as pc
    from xds_server import proxy_status

    given = [f for f in ("fqdn", "port", "subset", "direction", "name") if getattr(args, f)]
    wrong = [f for f in given if f not in _PROXY_CONFIG_FILTERS[args.kind]]
    if wrong:
        allowed = ", ".join(f"--{f}" for f in _PROXY_CONFIG_FILTERS[args.kind])
        print(
            f"xds-server proxy-config: --{wrong[0]} does not apply to {args.kind} "
            f"(these do: {allowed})",
            file=sys.stderr,
        )
        return 2
    base = args.server.rstrip("/")
    try:
        syncz = proxy_status.get_json(f"{base}/debug/syncz", args.token)
        admin = proxy_status.proxy_of(syncz, args.proxy).get("admin")
        dump = statuses = None
        if admin and args.source != "server":
            try:
                dump = proxy_status.get_json(f"http://{admin}/config_dump?include_eds", timeout=5)
                if args.kind in ("endpoints", "all"):
                    statuses = proxy_status.get_json(
                        f"http://{admin}/clusters?format=json", timeout=5
                    ).get("cluster_statuses", [])
            except proxy_status.DebugApiError:
                if args.source == "envoy":
                    raise
        if dump is None:
            dump = proxy_status.get_json(f"{base}/debug/config_dump?proxy={args.proxy}", args.token)
    except proxy_status.DebugApiError as exc:
        print(f"xds-server proxy-config: {exc}", file=sys.stderr)
        return 1
    if args.output != "short":
        print(_dumped(dump, args.output))
        return 0
    resources = proxy_status.dynamic_resources(dump)
    match = pc.matcher(args.fqdn, args.port, args.subset, args.direction, args.name)
    try:  # which YAML resources made them (the DESTINATION RULE and VIRTUAL SERVICE columns)
        sources = proxy_status.get_json(f"{base}/debug/provenance?proxy={args.proxy}", args.token)
    except proxy_status.DebugApiError:
        sources = {}
    tables = []
    if args.kind in ("clusters", "all"):
        tables.append(
            pc.cluster_rows(resources["clusters"].values(), match, sources.get("clusters"))
        )
    if args.kind in ("listeners", "all"):
        tables.append(pc.listener_rows(resources["listeners"].values(), match))
    if args.kind in ("routes", "all"):
        tables.append(
            pc.route_rows(resources["routes"].values(), match, sources.get("virtual_hosts"))
        )
    if args.kind in ("endpoints", "all"):
        if statuses is not None:
            tables.append(pc.endpoint_rows(statuses, match))
        else:
            tables.append(pc.endpoint_rows_from_assignments(resources["endpoints"], match))
    if args.kind in ("secrets", "all"):
        tables.append(pc.secret_rows(dump, match))
    print("\n\n".join(proxy_status.render(rows) for rows in tables))
    return 0


def _dumped(value, output: str) -> str:
    import json

    import yaml

    if output == "json":
        return json.dumps(value, indent=2)
    return yaml.safe_dump(value, sort_keys=False)


def cmd_token(args: argparse.Namespace) -> int:
    from xds_server import tokens
    from xds_server.server import STATE_DIR_NAME

    state = Path(args.state_dir) if args.state_dir else Path(args.config_dir) / STATE_DIR_NAME
    try:
        key = tokens.load_or_create_key(state)
    except (OSError, tokens.TokenError) as exc:
        print(f"xds-server token: {exc}", file=sys.stderr)
        return 1
    print(tokens.issue(key, args.namespace, args.service_account, int(args.ttl)))
    return 0


def cmd_sidecar_identities(args: argparse.Namespace) -> int:
    from xds_server import identity_files

    try:
        sidecars = [identity_files.parse_sidecar(s) for s in args.sidecar]
        identity_files.write(
            Path(args.state_dir), Path(args.bootstraps), Path(args.out), sidecars, int(args.ttl)
        )
    except (OSError, identity_files.IdentityFileError) as exc:
        print(f"xds-server sidecar-identities: {exc}", file=sys.stderr)
        return 1
    print(f"wrote the identities of {len(sidecars)} sidecars to {args.out}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from xds_server.config.store import ConfigStore

    directory = Path(args.config_dir)
    if not directory.is_dir():
        print(f"{directory}: not a directory", file=sys.stderr)
        return 2
    store = ConfigStore(directory, max_file_bytes=args.max_file_bytes)
    snapshot = store.load_all()
    issues = store.all_issues()
    for issue in issues:
        print(issue, file=sys.stderr if issue.severity == "error" else sys.stdout)
    errors = sum(issue.severity == "error" for issue in issues)
    print(
        f"{len(snapshot.resources)} resources valid, {errors} errors, "
        f"{len(issues) - errors} warnings"
    )
    return 1 if errors else 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """istioctl analyze for a config directory: findings with Istio's codes and file:line;
    exit 79 when one is at --failure-threshold or above."""
    import json

    import yaml

    from xds_server.analyze import FOUND_ISSUES_EXIT, analyze, level_at_least
    from xds_server.config.store import ConfigStore

    directory = Path(args.config_dir)
    if not directory.is_dir():
        print(f"{directory}: not a directory", file=sys.stderr)
        return 1
    store = ConfigStore(directory, max_file_bytes=args.max_file_bytes)
    snapshot = store.load_all()
    found = analyze(snapshot, store.accepted, store.all_issues())
    shown = [m for m in found if level_at_least(m.level, args.output_threshold)]
    if args.output == "log":
        for message in shown:
            print(message)
        if not shown:
            print(f"\u2714 No validation issues found when analyzing {directory}.")
    elif args.output == "json":
        print(json.dumps([m.as_dict() for m in shown], indent=2))
    else:
        print(yaml.safe_dump([m.as_dict() for m in shown], sort_keys=False), end="")
    failing = any(level_at_least(m.level, args.failure_threshold) for m in found)
    return FOUND_ISSUES_EXIT if failing else 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    options = BootstrapOptions(
        node_id=args.node_id,
        namespace=args.namespace,
        labels=args.labels,
        service_account=args.service_account,
        app_ports=args.app_port,
        inbound_ports=args.inbound_port,
        xds_address=args.xds_address,
        admin_address=args.admin_address,
        admin_port=args.admin_port,
        outbound_address=args.outbound_address,
        outbound_port=args.outbound_port,
        ip=args.ip,
        # Captured, the app is reached on loopback behind virtualInbound on every address.
        bind_address=args.bind_address
        or ("0.0.0.0" if args.interception_mode == "REDIRECT" else ""),
        cluster=args.cluster,
        role=args.role,
        xds_api=args.xds_api,
        interception_mode=args.interception_mode,
        token=args.token,
        xds_root_cert=args.xds_root_cert,
        xds_server_name=args.xds_server_name,
        workload_name=args.workload_name,
        stats_address=args.stats_address,
        stats_port=args.stats_port,
    )
    if args.config_dir:
        mesh = _mesh_of(Path(args.config_dir))
        if mesh is None:
            return 2
        options.stats_matcher = stats_matcher_of(mesh)
    if args.token and not args.xds_root_cert:
        print(
            "error: --token needs --xds-root-cert: a token goes only over xDS on TLS "
            "(the server's --xds-tls-port, 15012), where it cannot be read on the way",
            file=sys.stderr,
        )
        return 2
    if args.role == "gateway" and options.app_ports:
        print("error: a gateway has no app: drop --app-port", file=sys.stderr)
        return 2
    try:
        text = render(options)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    return 0


def _mesh_of(directory: Path):
    """The mesh config of a config directory, checked; None (reported) when it has errors."""
    from xds_server.config.store import ConfigStore

    if not directory.is_dir():
        print(f"error: --config-dir {directory}: not a directory", file=sys.stderr)
        return None
    store = ConfigStore(directory)
    snapshot = store.load_all()
    errors = [i for i in store.all_issues() if i.severity == "error" and "mesh" in i.field]
    for issue in errors:
        print(issue, file=sys.stderr)
    return None if errors else snapshot.mesh


def cmd_demo(args: argparse.Namespace) -> int:
    from xds_server.demo import run_demo

    return run_demo(
        Path(args.dir),
        base_port=args.xds_port,
        debug_port=args.debug_port,
        subnet=args.subnet,
        pods=args.pods,
    )


def version() -> str:
    """The installed distribution's version, else the one in pyproject.toml (a source tree)."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version("xds-server")
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    with contextlib.suppress(OSError, ValueError, KeyError):
        return tomllib.loads(pyproject.read_text())["project"]["version"]
    return "unknown"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option states its default: "(default: X)" unless its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default is argparse.SUPPRESS:
            return text
        if action.required:
            return f"{text} (required)".strip()
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, "*"):
            return text  # a positional argument has no default
        return f"{text} (default: %(default)s)".strip()


def _non_negative(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text}")
        return value

    return parse


def _positive_int(text: str) -> int:
    value = _non_negative(int)(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _port(text: str) -> int:
    value = _non_negative(int)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text}")
    return value


def _port_or_off(text: str) -> int | None:
    return None if text.strip().lower() == "off" else _port(text)


def _subnet(text: str) -> str:
    """127.X.Y: the first three octets of a loopback /24."""
    parts = text.split(".")
    if (
        len(parts) != 3
        or parts[0] != "127"
        or not all(p.isdigit() and int(p) <= 255 for p in parts)
    ):
        raise argparse.ArgumentTypeError(f"{text!r} is not a loopback subnet like 127.0.11")
    return ".".join(str(int(p)) for p in parts)


def _add_max_file_bytes(command: argparse.ArgumentParser) -> None:
    """One limit for serve and validate, so that they refuse the same files."""
    command.add_argument(
        "--max-file-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_BYTES,
        metavar="BYTES",
        help="config files larger than this are refused, not read (default: 8388608, 8 MiB)",
    )


def cmd_iptables(args: argparse.Namespace) -> int:
    from xds_server import iptables

    options = iptables.CaptureOptions(
        proxy_port=args.envoy_port,
        inbound_capture_port=args.inbound_capture_port,
        proxy_uid=tuple(args.proxy_uid),
        proxy_gid=tuple(args.proxy_gid),
        include_inbound_ports=args.istio_inbound_ports,
        exclude_inbound_ports=tuple(args.istio_local_exclude_ports),
        include_outbound_cidrs=args.istio_service_cidr,
        exclude_outbound_cidrs=tuple(args.istio_service_exclude_cidr),
        include_outbound_ports=tuple(args.istio_outbound_ports),
        exclude_outbound_ports=tuple(args.istio_local_outbound_ports_exclude),
        exclude_interfaces=tuple(args.istio_exclude_interfaces),
        redirect_dns=args.redirect_dns,
        capture_all_dns=args.capture_all_dns,
        dns_servers=tuple(
            args.dns_servers if args.dns_servers is not None else iptables.nameservers()
        ),
    )
    try:
        if args.cleanup:
            iptables.cleanup()
        elif args.apply:
            iptables.apply(options)
        else:
            sys.stdout.write(iptables.restore_input(iptables.rules(options)))
    except (iptables.CaptureError, RuntimeError, OSError) as exc:
        print(f"xds-server iptables: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_inject(args: argparse.Namespace) -> int:
    from xds_server import inject
    from xds_server.config.yaml_lines import YamlSyntaxError, read_documents

    try:
        text = sys.stdin.read() if args.compose_file == "-" else Path(args.compose_file).read_text()
        documents = list(read_documents(text))
    except (OSError, UnicodeDecodeError, YamlSyntaxError) as exc:
        line = f":{exc.line}" if isinstance(exc, YamlSyntaxError) else ""
        print(f"xds-server inject: {args.compose_file}{line}: {exc}", file=sys.stderr)
        return 1
    document = documents[0] if documents else None
    matcher = None
    if Path(args.config_dir).is_dir():  # the mesh config's proxyStatsMatcher, if any
        mesh = _mesh_of(Path(args.config_dir))
        if mesh is None:
            return 1
        matcher = stats_matcher_of(mesh)
    try:
        options = inject.InjectOptions(
            namespace=args.namespace,
            config_dir=f"./{args.config_dir.removeprefix('./')}",
            bootstrap_dir=f"./{args.bootstrap_dir.removeprefix('./')}",
            mode=args.mode,
            stats_matcher=matcher,
        )
        result = inject.inject(document.value if document else None, options)
    except inject.InjectError as exc:
        line = document.line_of(exc.path) if document else 1
        print(f"xds-server inject: {args.compose_file}:{line}: {exc}", file=sys.stderr)
        return 1
    # The bootstraps go beside the written file (its volumes name them relative to it),
    # or in the current directory when it goes to stdout or a device.
    written = Path(args.output).resolve() if args.output != "-" else None
    base = written.parent if written and written.parent != Path("/dev") else Path.cwd()
    bootstraps = base / args.bootstrap_dir
    bootstraps.mkdir(parents=True, exist_ok=True)
    for name, body in result.bootstraps.items():
        (bootstraps / name).write_text(body)
    if args.emit_services:
        services = Path(args.emit_services)
        services.mkdir(parents=True, exist_ok=True)
        for app, body in result.services.items():
            (services / f"{app}-service.yaml").write_text(body)
    rendered = inject.dump(result.compose, args.mode)
    if args.output == "-":
        sys.stdout.write(rendered)
    else:
        Path(args.output).write_text(rendered)
    return 0


def _port_list(text: str) -> list[int]:
    return [_port(item) for item in _comma_list(text)]


def _comma_list(text: str) -> list[str]:
    return [item for item in (p.strip() for p in text.split(",")) if item]


def _ids(text: str) -> list[int]:
    try:
        return [int(item) for item in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numeric ids") from None


def _add_capture_options(capture: argparse.ArgumentParser) -> None:
    """istio-iptables' flags (short and long names as Istio spells them)."""
    add = capture.add_argument
    add("-p", "--envoy-port", type=_port, default=15001, help="where outbound TCP goes")
    add("-z", "--inbound-capture-port", type=_port, default=15006, help="where inbound TCP goes")
    add("-u", "--proxy-uid", type=_ids, default=[1337], help="the sidecar's uids, not captured")
    add("-g", "--proxy-gid", type=_ids, default=[1337], help="the sidecar's gids, not captured")
    add(
        "-b",
        "--istio-inbound-ports",
        default="*",
        help='inbound ports to capture: "*" for all, a comma list, or "" for none',
    )
    add(
        "-d",
        "--istio-local-exclude-ports",
        type=_port_list,
        default=[15090, 15021, 15020],
        help='inbound ports not captured when capturing "*"',
    )
    add(
        "-i",
        "--istio-service-cidr",
        default="*",
        help='outbound destinations to capture: "*", a comma list of CIDRs, or "" for none',
    )
    add(
        "-x",
        "--istio-service-exclude-cidr",
        type=_comma_list,
        default=[],
        help="outbound CIDRs not captured",
    )
    add(
        "-q",
        "--istio-outbound-ports",
        type=_port_list,
        default=[],
        help="outbound ports captured whatever the destination",
    )
    add(
        "-o",
        "--istio-local-outbound-ports-exclude",
        type=_port_list,
        default=[],
        help="outbound ports not captured",
    )
    add(
        "-c",
        "--istio-exclude-interfaces",
        type=_comma_list,
        default=[],
        help="interfaces whose traffic is never captured",
    )
    add("--redirect-dns", action="store_true", help="send the app's DNS to the sidecar (15053)")
    add(
        "--capture-all-dns",
        action="store_true",
        help="with --redirect-dns: all DNS, not only to resolv.conf's nameservers",
    )
    add(
        "--dns-servers",
        type=_comma_list,
        default=None,
        help="with --redirect-dns: the nameservers to capture (default: resolv.conf's)",
    )
    mode = capture.add_mutually_exclusive_group()
    mode.add_argument(
        "--apply", action="store_true", help="install the rules (with iptables-restore)"
    )
    mode.add_argument("--cleanup", action="store_true", help="remove rules an --apply installed")


def _add_debug_api(command: argparse.ArgumentParser) -> None:
    """--server and --token: where the running server's debug API is, and its key."""
    command.add_argument(
        "--server", default="http://127.0.0.1:15014", help="the server's debug HTTP address"
    )
    command.add_argument("--token", default="", help="an admin token, if the debug API wants one")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="xds-server", description=__doc__, formatter_class=_HelpFormatter
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    top.add_argument("--log-level", default="INFO", help="log level: DEBUG, INFO, WARNING or ERROR")
    sub = top.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)

    serve = command("serve", "serve xDS for the YAML files in a directory")
    serve.add_argument(
        "--config-dir",
        default="mesh",
        help="directory of YAML files to serve; it must exist (see --create-config-dir)",
    )
    serve.add_argument(
        "--create-config-dir",
        action="store_true",
        help="create --config-dir when it does not exist, instead of refusing to start",
    )
    serve.add_argument("--xds-address", default="127.0.0.1", help="address of the xDS gRPC port")
    serve.add_argument(
        "--xds-port",
        type=_port_or_off,
        default=15010,
        help="plaintext xDS (ADS, gRPC) port; off: none, sidecars use --xds-tls-port",
    )
    serve.add_argument(
        "--xds-tls-port",
        type=_port_or_off,
        default=15012,
        help="xDS over TLS, with a certificate from the mesh CA for the name xds-server "
        "(bootstrap --xds-root-cert); off: none",
    )
    serve.add_argument(
        "--xds-tls-name",
        action="append",
        default=[],
        metavar="NAME",
        help="another DNS name or IP address for the TLS port's certificate; repeatable",
    )
    serve.add_argument(
        "--debug-address", default="127.0.0.1", help="address of the debug/health HTTP port"
    )
    serve.add_argument("--debug-port", type=_port, default=15014, help="debug and health HTTP port")
    serve.add_argument(
        "--max-message-mb",
        type=_positive_int,
        default=64,
        help="gRPC message size limit in MiB",
    )
    serve.add_argument(
        "--state-dir",
        default=None,
        help="where the server remembers connected workloads across restarts "
        "(default: <config-dir>/.xds-server)",
    )
    serve.add_argument(
        "--restart-grace",
        type=_non_negative(float),
        default=30.0,
        metavar="SECONDS",
        help="after a start, remembered workloads stay endpoints this long unless they reconnect",
    )
    _add_max_file_bytes(serve)
    serve.add_argument(
        "--settle-ms",
        type=_non_negative(int),
        default=1000,
        metavar="MS",
        help="a file that turns empty or unparsable gets this long to be written in full "
        "before its errors count",
    )
    serve.add_argument(
        "--require-tokens",
        action="store_true",
        help="refuse xDS streams without a token (xds-server token); without this flag they "
        "are served config but never a secret",
    )
    serve.add_argument(
        "--cert-lifetime",
        type=_non_negative(float),
        default=24 * 3600.0,
        metavar="SECONDS",
        help="workload certificates live this long and are renewed at half of it",
    )
    serve.add_argument(
        "--jwks-refresh",
        type=_non_negative(float),
        default=20 * 60.0,
        metavar="SECONDS",
        help="RequestAuthentication keys (jwksUri, OpenID discovery) are fetched again this "
        "often; a failed fetch is retried sooner",
    )
    serve.add_argument(
        "--workload-key",
        choices=("ecdsa", "rsa"),
        default="ecdsa",
        help="workload keys: ECDSA P-256, or RSA 2048 (about 25 a second on one core)",
    )
    serve.add_argument(
        "--debug-require-token",
        action="store_true",
        help="the debug API answers only with an admin token (xds-server token --namespace "
        "istio-system --service-account xds-admin), even on loopback; off loopback it always "
        "does",
    )
    serve.add_argument(
        "--cacerts",
        default=None,
        metavar="DIR",
        help="sign with your CA, in Istio's cacerts layout (ca-cert.pem, ca-key.pem, "
        "root-cert.pem, cert-chain.pem); default: a root made in <state-dir>/ca",
    )
    serve.set_defaults(func=cmd_serve)

    token = command("token", "issue a token that lets a sidecar's xDS stream speak for a workload")
    token.add_argument("--namespace", default="default", help="the workload's namespace")
    token.add_argument("--service-account", required=True, help="the workload's service account")
    token.add_argument(
        "--ttl",
        type=_non_negative(float),
        default=365 * 24 * 3600.0,
        metavar="SECONDS",
        help="how long the token is good for (default: a year)",
    )
    token.add_argument("--config-dir", default="mesh", help="the server's --config-dir")
    token.add_argument(
        "--state-dir",
        default=None,
        help="the server's --state-dir (default: <config-dir>/.xds-server)",
    )
    token.set_defaults(func=cmd_token)

    identities = command(
        "sidecar-identities",
        "write each sidecar's bootstrap with its token, and the mesh root, each into a "
        "directory of its own (what compose's xds-identity service runs before the mesh)",
    )
    identities.add_argument(
        "sidecar", nargs="+", help="NAME[:UID]: <bootstraps>/NAME.yaml, run by UID"
    )
    identities.add_argument("--state-dir", required=True, help="the server's --state-dir")
    identities.add_argument(
        "--bootstraps", required=True, help="where the sidecars' bootstraps are (from inject)"
    )
    identities.add_argument("--out", required=True, help="writes <out>/NAME/ per sidecar")
    identities.add_argument(
        "--ttl",
        type=_non_negative(float),
        default=365 * 24 * 3600.0,
        metavar="SECONDS",
        help="how long the tokens are good for (default: a year)",
    )
    identities.set_defaults(func=cmd_sidecar_identities)

    cert = command("cert", "show a workload's current certificate, or the mesh root")
    cert.add_argument("--proxy", default=None, help="the proxy's node id (default: the root)")
    _add_debug_api(cert)

    cert.set_defaults(func=cmd_cert)

    status = command(
        "proxy-status",
        "every proxy's sync state (istioctl's table); with a proxy, its rejections and what "
        "its Envoy holds against what was sent",
    )
    status.add_argument("proxy", nargs="?", default=None, help="a proxy's node id")
    _add_debug_api(status)
    status.set_defaults(func=cmd_proxy_status)

    config = command(
        "proxy-config",
        "one proxy's clusters, listeners, routes, endpoints or secrets (istioctl's tables)",
    )
    config.add_argument(
        "kind",
        choices=("clusters", "listeners", "routes", "endpoints", "secrets", "all"),
        help="what to show",
    )
    config.add_argument("proxy", help="the proxy's node id")
    config.add_argument(
        "-o",
        "--output",
        choices=("short", "json", "yaml"),
        default="short",
        help="short: istioctl's tables; json or yaml: the whole resources",
    )
    config.add_argument(
        "--source",
        choices=("auto", "envoy", "server"),
        default="auto",
        help="envoy: what the Envoy holds (its admin API); server: what was sent to it; "
        "auto: the Envoy's when it answers",
    )
    for flag, what in (
        ("--fqdn", "a service host"),
        ("--port", "a port"),
        ("--subset", "a subset"),
        ("--direction", "inbound or outbound"),
        ("--name", "a resource name"),
    ):
        config.add_argument(flag, default="", help=f"only {what}")
    _add_debug_api(config)
    config.set_defaults(func=cmd_proxy_config)

    validate = command("validate", "check a config directory; exit 1 on errors")
    validate.add_argument("config_dir", help="directory of YAML files to check")
    _add_max_file_bytes(validate)
    validate.set_defaults(func=cmd_validate)

    analyze_ = command(
        "analyze", "istioctl analyze for a config directory: Istio's codes, with file:line"
    )
    analyze_.add_argument("config_dir", help="directory of YAML files to analyze")
    analyze_.add_argument(
        "-o",
        "--output",
        choices=("log", "json", "yaml"),
        default="log",
        help="log: a line per message, as istioctl's; json or yaml: the messages' fields",
    )
    analyze_.add_argument(
        "--failure-threshold",
        choices=("Info", "Warning", "Error"),
        default="Error",
        help="exit 79 when a message is at this level or above",
    )
    analyze_.add_argument(
        "--output-threshold",
        choices=("Info", "Warning", "Error"),
        default="Info",
        help="show messages at this level or above",
    )
    _add_max_file_bytes(analyze_)
    analyze_.set_defaults(func=cmd_analyze)

    boot = command("bootstrap", "write an Envoy bootstrap for one sidecar or gateway")
    boot.add_argument("--node-id", required=True, help="node.id: the proxy's unique name")
    boot.add_argument("--namespace", default="default", help="the workload's namespace")
    boot.add_argument(
        "--labels",
        type=_labels,
        default={},
        help="the workload's labels, KEY=VALUE,... e.g. app=reviews,version=v2 (default: none)",
    )
    boot.add_argument("--service-account", default="default", help="the workload's service account")
    boot.add_argument(
        "--app-port",
        type=_port,
        action="append",
        default=[],
        help="a port the app listens on; repeat for several (default: none)",
    )
    boot.add_argument(
        "--inbound-port",
        type=_port,
        action="append",
        default=[],
        help="sidecar port for the matching --app-port (default: 15006, 15007, ...)",
    )
    boot.add_argument(
        "--xds-address", default="127.0.0.1:15010", help="HOST:PORT of the xDS server"
    )
    boot.add_argument("--admin-address", default="127.0.0.1", help="Envoy admin address")
    boot.add_argument("--admin-port", type=_port, default=15000, help="Envoy admin port")
    boot.add_argument(
        "--outbound-address",
        default="127.0.0.1",
        help="where the app reaches the mesh (its HTTP proxy)",
    )
    boot.add_argument(
        "--outbound-port", type=_port, default=15001, help="the outbound listener's port"
    )
    boot.add_argument("--ip", default="", help="workload IP (default: as seen by the server)")
    boot.add_argument(
        "--bind-address",
        default="",
        help="address for inbound listeners (default: the workload IP)",
    )
    boot.add_argument("--cluster", default="", help="node.cluster (default: the app label)")
    boot.add_argument(
        "--workload-name",
        default="",
        help="the workload's name in Istio's metrics (source_workload, destination_workload); "
        "default: the node id",
    )
    boot.add_argument(
        "--stats-address",
        default="0.0.0.0",
        help="where Prometheus scrapes Istio's metrics (/stats/prometheus)",
    )
    boot.add_argument(
        "--stats-port",
        type=_port,
        default=15090,
        help="Istio's Prometheus port; 0: none",
    )
    boot.add_argument(
        "--config-dir",
        default="",
        help="the server's config directory: its mesh config's defaultConfig."
        "proxyStatsMatcher (stats kept) goes into the bootstrap",
    )
    boot.add_argument(
        "--role",
        choices=("sidecar", "gateway"),
        default="sidecar",
        help="gateway: an ingress proxy; Gateways select it by --labels and it listens on "
        "their server ports at --bind-address",
    )
    boot.add_argument(
        "--xds-api",
        choices=("delta", "sotw"),
        default="delta",
        help="delta: incremental xDS, only changes are sent; sotw: state of the world, "
        "every resource of a type on each change",
    )
    boot.add_argument(
        "--interception-mode",
        choices=("NONE", "REDIRECT"),
        default="NONE",
        help="REDIRECT: the pod's traffic is captured by iptables (xds-server iptables) and "
        "the sidecar gets Istio's virtualOutbound (15001) and virtualInbound (15006) "
        "listeners; NONE: the app uses the sidecar as its proxy",
    )
    boot.add_argument(
        "--token",
        default="",
        help="the workload's token (xds-server token), sent on the xDS stream: the server "
        "gives the stream that identity's certificate",
    )
    boot.add_argument(
        "--xds-root-cert",
        default="",
        metavar="FILE",
        help="speak xDS over TLS (the server's --xds-tls-port, 15012), verifying the server "
        "with this mesh root (<state-dir>/ca/root-cert.pem, or your cacerts' "
        "root-cert.pem); Envoy reads the file, so give its path as Envoy sees it",
    )
    boot.add_argument(
        "--xds-server-name",
        default="xds-server",
        help="the name the server's TLS certificate must carry (SNI and SAN check)",
    )
    boot.add_argument("-o", "--output", default="-", help="file to write, - for standard output")
    boot.set_defaults(func=cmd_bootstrap)

    capture = command(
        "iptables",
        "print (or --apply) the iptables rules that capture a pod's traffic into its "
        "sidecar, as istio-init sets them (REDIRECT mode); run in the pod's network "
        "namespace",
    )
    _add_capture_options(capture)
    capture.set_defaults(func=cmd_iptables)

    inject = command(
        "inject",
        "add an Envoy sidecar next to each service of a docker-compose file, and the "
        "control plane (like `linkerd inject`); writes the bootstraps beside the output",
    )
    inject.add_argument("compose_file", help="the docker-compose file to read (- for stdin)")
    inject.add_argument("-o", "--output", default="-", help="file to write, - for stdout")
    inject.add_argument(
        "--mode",
        choices=("proxy", "capture"),
        default="proxy",
        help="proxy: apps reach the mesh through HTTP_PROXY=127.0.0.1:15001; capture: each "
        "app becomes a pod whose traffic is captured (iptables, as istio-init sets them), "
        "so apps need no proxy settings",
    )
    inject.add_argument("--namespace", default="default", help="the workloads' namespace")
    inject.add_argument(
        "--bootstrap-dir",
        default="envoy-configs",
        help="where the sidecars' bootstraps go, relative to the output file's directory",
    )
    inject.add_argument(
        "--config-dir", default="mesh", help="the mesh YAML the control plane serves (mounted)"
    )
    inject.add_argument(
        "--emit-services",
        metavar="DIR",
        default=None,
        help="also write a Kubernetes Service per app (from its ports) into DIR",
    )
    inject.set_defaults(func=cmd_inject)

    demo = command("demo", "run a local mesh: server, Envoy sidecars, sample apps")
    demo.add_argument("--dir", default="demo-mesh", help="where the demo's YAML goes")
    demo.add_argument(
        "--xds-port",
        type=_port,
        default=15010,
        help="the control plane's xDS port (xDS over TLS on the next but one, 15012)",
    )
    demo.add_argument(
        "--debug-port",
        type=_port,
        default=None,
        help="the control plane's debug HTTP port (default: --xds-port + 4, 15014)",
    )
    demo.add_argument(
        "--subnet",
        type=_subnet,
        default="127.0.10",
        help="loopback /24 for the workloads (127.X.Y); each gets 127.X.Y.N and Istio's "
        "ports there, so a second demo needs another subnet",
    )
    demo.add_argument(
        "--pods",
        action="store_true",
        help="run each workload as a pod: its own network namespace on a bridge, its "
        "traffic captured by iptables (needs root; without it, the demo says so and runs "
        "as usual)",
    )
    demo.set_defaults(func=cmd_demo)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
