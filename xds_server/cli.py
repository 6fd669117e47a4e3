"""The `xds-server` command: serve, validate, bootstrap, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from xds_server.bootstrap import BootstrapOptions, render


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
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await coro_factory(stop)

    asyncio.run(main())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from xds_server.server import ServerOptions, serve

    options = ServerOptions(
        config_dir=Path(args.config_dir),
        xds_address=args.xds_address,
        xds_port=args.xds_port,
        debug_address=args.debug_address,
        debug_port=args.debug_port,
        max_message_mb=args.max_message_mb,
    )
    return _run_until_signal(lambda stop: serve(options, stop))


def cmd_validate(args: argparse.Namespace) -> int:
    from xds_server.config.store import ConfigStore

    directory = Path(args.config_dir)
    if not directory.is_dir():
        print(f"{directory}: not a directory", file=sys.stderr)
        return 2
    store = ConfigStore(directory)
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
        bind_address=args.bind_address,
        cluster=args.cluster,
        role=args.role,
    )
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


def cmd_demo(args: argparse.Namespace) -> int:
    from xds_server.demo import run_demo

    return run_demo(Path(args.dir), base_port=args.xds_port)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="xds-server", description=__doc__)
    top.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = top.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve xDS for the YAML files in a directory")
    serve.add_argument("--config-dir", default="mesh")
    serve.add_argument("--xds-address", default="127.0.0.1")
    serve.add_argument("--xds-port", type=int, default=15010)
    serve.add_argument("--debug-address", default="127.0.0.1")
    serve.add_argument("--debug-port", type=int, default=15014)
    serve.add_argument(
        "--max-message-mb", type=int, default=64, help="gRPC message size limit in MiB (default 64)"
    )
    serve.set_defaults(func=cmd_serve)

    validate = sub.add_parser("validate", help="check a config directory; exit 1 on errors")
    validate.add_argument("config_dir")
    validate.set_defaults(func=cmd_validate)

    boot = sub.add_parser("bootstrap", help="write an Envoy bootstrap for one sidecar or gateway")
    boot.add_argument("--node-id", required=True)
    boot.add_argument("--namespace", default="default")
    boot.add_argument("--labels", type=_labels, default={}, help="app=reviews,version=v2")
    boot.add_argument("--service-account", default="default")
    boot.add_argument(
        "--app-port",
        type=int,
        action="append",
        default=[],
        help="a port the app listens on (repeat for several)",
    )
    boot.add_argument(
        "--inbound-port",
        type=int,
        action="append",
        default=[],
        help="sidecar port for the matching --app-port (default 15006, 15007, ...)",
    )
    boot.add_argument("--xds-address", default="127.0.0.1:15010", help="HOST:PORT of the server")
    boot.add_argument("--admin-address", default="127.0.0.1")
    boot.add_argument("--admin-port", type=int, default=15000)
    boot.add_argument(
        "--outbound-address",
        default="127.0.0.1",
        help="where the app reaches the mesh (its HTTP proxy)",
    )
    boot.add_argument("--outbound-port", type=int, default=15001)
    boot.add_argument("--ip", default="", help="workload IP (default: as seen by the server)")
    boot.add_argument(
        "--bind-address",
        default="",
        help="address for inbound listeners (default: the workload IP)",
    )
    boot.add_argument("--cluster", default="", help="node.cluster (default: the app label)")
    boot.add_argument(
        "--role",
        choices=("sidecar", "gateway"),
        default="sidecar",
        help="gateway: an ingress proxy; Gateways select it by --labels and it listens on "
        "their server ports at --bind-address",
    )
    boot.add_argument("-o", "--output", default="-")
    boot.set_defaults(func=cmd_bootstrap)

    demo = sub.add_parser("demo", help="run a local mesh: server, Envoy sidecars, sample apps")
    demo.add_argument("--dir", default="demo-mesh", help="where the demo's YAML goes")
    demo.add_argument(
        "--xds-port",
        type=int,
        default=15010,
        help="xDS port; the debug port is this + 4 (default 15010, 15014)",
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
