"""Transparent capture as istio-init sets it up: iptables NAT rules in the pod's network
namespace that send the app's outbound TCP to the sidecar's 15001 and inbound TCP to its
15006 (and, with DNS capture, DNS to Envoy's DNS listener).

The rules are Istio's (istio-iptables in REDIRECT mode: chains ISTIO_INBOUND,
ISTIO_IN_REDIRECT, ISTIO_OUTPUT, ISTIO_REDIRECT, with the same order and exceptions), so
what users know of Istio's capture holds: the sidecar's own traffic (its uid or gid) is
not captured, loopback traffic to the app stays on loopback, 127.0.0.6 is the inbound
passthrough source, and ports and CIDRs are included or excluded with the same flags.
`rules` is pure; `apply` and `cleanup` run iptables-restore and iptables.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

CHAINS = ("ISTIO_INBOUND", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT")
DNS_CHAIN = "ISTIO_OUTPUT_DNS"  # ours: the app's UDP DNS, ahead of a runtime's DNS rules
DNS_PORT = 15053


@dataclass(frozen=True)
class CaptureOptions:
    """istio-iptables' options, by its flag names."""

    proxy_port: int = 15001  # -p: where outbound TCP goes
    inbound_capture_port: int = 15006  # -z: where inbound TCP goes
    proxy_uid: Sequence[int] = (1337,)  # -u: the sidecar's own traffic is not captured
    proxy_gid: Sequence[int] = (1337,)  # -g
    include_inbound_ports: str = "*"  # -b: "*", or ports to capture ("" for none)
    exclude_inbound_ports: Sequence[int] = (15090, 15021, 15020)  # -d, with "*"
    include_outbound_cidrs: str = "*"  # -i: "*", or CIDRs to capture ("" for none)
    exclude_outbound_cidrs: Sequence[str] = ()  # -x
    include_outbound_ports: Sequence[int] = ()  # -q: captured whatever the CIDR
    exclude_outbound_ports: Sequence[int] = ()  # -o
    exclude_interfaces: Sequence[str] = ()  # -c: traffic on these is never captured
    redirect_dns: bool = False  # DNS to the sidecar's DNS listener
    capture_all_dns: bool = False  # all DNS, not only to the resolv.conf nameservers
    dns_servers: Sequence[str] = field(default_factory=tuple)  # the nameservers captured
    dns_port: int = DNS_PORT


class CaptureError(ValueError):
    """An option istio-iptables would refuse; the message names the flag."""


def _ports(text: str, flag: str) -> list[int]:
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        if not item.isdigit() or not 0 < int(item) < 65536:
            raise CaptureError(f"{flag}: {item!r} is not a port number")
        out.append(int(item))
    return out


def _cidrs(items: Sequence[str], flag: str) -> list[str]:
    out = []
    for item in items:
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise CaptureError(f"{flag}: {item!r} is not a CIDR") from None
        if network.version != 4:
            raise CaptureError(f"{flag}: {item!r}: only IPv4 is captured")
        out.append(str(network))
    return out


def rules(options: CaptureOptions) -> dict[str, list[str]]:
    """table -> its rules in iptables-restore form (chains created first), in the order
    istio-iptables writes them."""
    for flag, port in (
        ("--envoy-port", options.proxy_port),
        ("--inbound-capture-port", options.inbound_capture_port),
        ("--dns-port", options.dns_port),
    ):
        if not 0 < port < 65536:
            raise CaptureError(f"{flag}: {port} is not a port")
    if not options.proxy_uid and not options.proxy_gid:
        raise CaptureError("--proxy-uid/--proxy-gid: the sidecar's own traffic must be let through")
    nat = [f"-N {chain}" for chain in CHAINS]
    raw: list[str] = []
    nat += [
        # HBONE (Istio's ambient tunnel port) is never captured inbound.
        "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
        f"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {options.proxy_port}",
        f"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {options.inbound_capture_port}",
    ]
    for interface in options.exclude_interfaces:
        nat.append(f"-A PREROUTING -i {interface} -j RETURN")
        nat.append(f"-A OUTPUT -o {interface} -j RETURN")
    # Inbound.
    if options.include_inbound_ports.strip():
        nat.append("-A PREROUTING -p tcp -j ISTIO_INBOUND")
        if options.include_inbound_ports.strip() == "*":
            nat += [
                f"-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN"
                for port in options.exclude_inbound_ports
            ]
            nat.append("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT")
        else:
            nat += [
                f"-A ISTIO_INBOUND -p tcp --dport {port} -j ISTIO_IN_REDIRECT"
                for port in _ports(options.include_inbound_ports, "--include-inbound-ports")
            ]
    # Outbound.
    nat.append("-A OUTPUT -p tcp -j ISTIO_OUTPUT")
    nat += [
        f"-A ISTIO_OUTPUT -p tcp --dport {port} -j RETURN"
        for port in options.exclude_outbound_ports
    ]
    # Inbound passthrough: the sidecar reaches the app from 127.0.0.6, never captured.
    nat.append("-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN")
    for kind, owners in (("uid", options.proxy_uid), ("gid", options.proxy_gid)):
        for owner in owners:
            nat += [
                # The sidecar calling its own pod's IP over loopback: that is inbound.
                f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --{kind}-owner {owner} "
                "-j ISTIO_IN_REDIRECT",
                # Anyone else on loopback (the app calling itself) stays there.
                f"-A ISTIO_OUTPUT -o lo -m owner ! --{kind}-owner {owner} -j RETURN",
                # The sidecar's own traffic leaves as it is.
                f"-A ISTIO_OUTPUT -m owner --{kind}-owner {owner} -j RETURN",
            ]
    dns_servers = _cidrs(list(options.dns_servers), "--dns-servers")
    if options.redirect_dns:
        if not options.capture_all_dns and not dns_servers:
            raise CaptureError(
                "--redirect-dns: no IPv4 nameserver to capture (none in resolv.conf); "
                "pass --dns-servers or --capture-all-dns"
            )
        targets = [""] if options.capture_all_dns else [f" -d {s}" for s in dns_servers]
        # TCP DNS (answers too long for UDP) goes to the nameserver as it is: Envoy's
        # DNS listener is UDP only, where istio-iptables hands TCP to istio-agent.
        nat += [f"-A ISTIO_OUTPUT -p tcp --dport 53{target} -j RETURN" for target in targets]
    nat.append("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN")
    nat += [
        f"-A ISTIO_OUTPUT -d {cidr} -j RETURN"
        for cidr in _cidrs(list(options.exclude_outbound_cidrs), "--exclude-outbound-cidrs")
    ]
    nat += [
        f"-A ISTIO_OUTPUT -p tcp --dport {port} -j ISTIO_REDIRECT"
        for port in options.include_outbound_ports
    ]
    include = options.include_outbound_cidrs.strip()
    if include == "*":
        nat.append("-A ISTIO_OUTPUT -j ISTIO_REDIRECT")
    elif include:
        cidrs = [c.strip() for c in include.split(",") if c.strip()]
        nat += [
            f"-A ISTIO_OUTPUT -d {cidr} -j ISTIO_REDIRECT"
            for cidr in _cidrs(cidrs, "--include-outbound-cidrs")
        ]
    if options.redirect_dns:
        # UDP DNS: the sidecar's own lookups go out; the app's go to the DNS listener.
        # istio-iptables appends these to OUTPUT; here they are a chain jumped to from
        # its top, because a container runtime's own DNS rules (Docker DNATs
        # 127.0.0.11:53 to its resolver in the container) would otherwise come first and
        # the app's queries never reach the sidecar, while the sidecar's queries must
        # still reach them (a RETURN in OUTPUT itself would skip them).
        nat.append(f"-N {DNS_CHAIN}")
        nat += [
            f"-A {DNS_CHAIN} -o {interface} -j RETURN" for interface in options.exclude_interfaces
        ]
        nat += [
            f"-A {DNS_CHAIN} -m owner --{kind}-owner {owner} -j RETURN"
            for kind, owners in (("uid", options.proxy_uid), ("gid", options.proxy_gid))
            for owner in owners
        ]
        nat += [
            f"-A {DNS_CHAIN} -p udp --dport 53{target} -j REDIRECT --to-port {options.dns_port}"
            for target in targets
        ]
        nat.append(f"-I OUTPUT 1 -p udp --dport 53 -j {DNS_CHAIN}")
        # Conntrack zones keep the app's query and the sidecar's upstream query (same
        # ports, same nameserver) from being taken for one connection.
        for kind, owners in (("uid", options.proxy_uid), ("gid", options.proxy_gid)):
            for owner in owners:
                raw += [
                    f"-A OUTPUT -p udp --dport 53 -m owner --{kind}-owner {owner} -j CT --zone 1",
                    f"-A OUTPUT -p udp --sport {options.dns_port} -m owner --{kind}-owner "
                    f"{owner} -j CT --zone 2",
                ]
        # The app's queries share the sidecar's answers' zone, so the answers are
        # translated back to come from the nameserver the app asked.
        raw += [f"-A OUTPUT -p udp --dport 53{target} -j CT --zone 2" for target in targets]
        sources = [""] if options.capture_all_dns else [f" -s {s}" for s in dns_servers]
        raw += [f"-A PREROUTING -p udp --sport 53{source} -j CT --zone 1" for source in sources]
    tables = {"nat": [_marked(rule) for rule in nat]}
    if raw:
        tables["raw"] = [_marked(rule) for rule in raw]
    return tables


COMMENT = "--comment xds-server"  # what iptables -S shows of our mark
MARK = f"-m comment {COMMENT}"
_BUILT_IN = ("-A PREROUTING ", "-A OUTPUT ", "-I OUTPUT 1 ")


def _marked(rule: str) -> str:
    """A rule for a built-in chain, carrying our mark, so that cleanup finds every one
    an earlier --apply added, whatever options it had."""
    for start in _BUILT_IN:
        if rule.startswith(start):
            return f"{start}{MARK} {rule[len(start) :]}"
    return rule


def restore_input(tables: dict[str, list[str]]) -> str:
    """The rules as iptables-restore reads them (with --noflush: only these change)."""
    out = []
    for table, lines in tables.items():
        out += [f"*{table}", *lines, "COMMIT"]
    return "\n".join(out) + "\n"


def nameservers(resolv_conf: str = "/etc/resolv.conf") -> list[str]:
    """The IPv4 nameservers of resolv.conf, as DNS capture redirects them."""
    found = []
    try:
        with open(resolv_conf, encoding="utf-8") as text:
            for line in text:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        if ipaddress.ip_address(parts[1]).version == 4:
                            found.append(parts[1])
                    except ValueError:
                        continue
    except OSError:
        pass
    return found


VARIANTS = ("iptables-legacy", "iptables-nft")


def variant(run=subprocess.run) -> str:
    """Which iptables to use, as istio-iptables decides: the variant that already holds
    rules in this namespace (a container runtime's, or an earlier --apply), so that ours
    are ordered against them; else the system's `iptables`. Rules of the legacy and the
    nf_tables variants live apart, and their relative order is not defined."""
    for name in VARIANTS:
        if shutil.which(f"{name}-save") is None:
            continue
        saved = run([f"{name}-save"], capture_output=True, text=True, check=False).stdout
        if any(line.startswith("-A ") for line in saved.splitlines()):
            return name
    return "iptables"


def cleanup(run=subprocess.run, binary: str | None = None) -> None:
    """Remove what `apply` added and nothing else: every jump into Istio's chains and
    every rule with our mark in the built-in chains (DNS, excluded interfaces), whatever
    the options that added them, then the chains. Missing rules are not an error:
    cleanup is idempotent."""
    binary = binary or variant(run)
    for table in ("nat", "raw"):
        for chain in ("PREROUTING", "OUTPUT"):
            listed = run(
                [binary, "-t", table, "-S", chain], capture_output=True, text=True, check=False
            ).stdout
            for line in listed.splitlines():
                if " -j ISTIO_" in line or COMMENT in line:
                    _delete(run, binary, table, line)
    for action in ("-F", "-X"):  # all flushed first: they jump to one another
        for chain in (*CHAINS, DNS_CHAIN):
            run([binary, "-t", "nat", action, chain], capture_output=True, check=False)


def _delete(run, binary: str, table: str, rule: str) -> None:
    """Delete `rule` ("-A CHAIN spec..." or "-I CHAIN N spec...") from `table`, if it is
    there."""
    action, chain, *spec = rule.split()
    if action == "-I" and spec and spec[0].isdigit():
        spec = spec[1:]
    run([binary, "-t", table, "-D", chain, *spec], capture_output=True, check=False)


def apply(options: CaptureOptions, run=subprocess.run) -> str:
    """Install the rules in the current network namespace, replacing an earlier set
    (running twice leaves one set); the iptables variant used."""
    binary = variant(run)
    cleanup(run, binary)
    done = run(
        [f"{binary}-restore", "--noflush"],
        input=restore_input(rules(options)),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{binary}-restore: {done.stderr.strip()}")
    return binary
