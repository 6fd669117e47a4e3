"""`xds-server iptables`: the rules istio-init sets, and what they do to real traffic.

The second half runs in network namespaces this test creates (a pod joined by a veth
pair to an "outside" namespace, addresses from 198.18.0.0/15): the rules are applied
in the pod with `xds-server iptables --apply`, small servers stand for the sidecar's
listeners and for the outside world, and clients run as the app's uid and as the
sidecar's to see where their connections land.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.pods import need_namespaces, probe
from xds_server import iptables
from xds_server.netns import Namespace, connect, run_prefix

POD, OUTSIDE = "198.18.0.2", "198.18.0.1"
APP_UID, PROXY_UID = 1000, 1337


def test_the_default_rules_are_istio_inits() -> None:
    nat = iptables.rules(iptables.CaptureOptions())["nat"]
    assert nat[:4] == [f"-N {c}" for c in iptables.CHAINS]
    assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in nat
    assert "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in nat
    inbound = [r for r in nat if r.startswith("-A ISTIO_INBOUND")]
    assert inbound == [
        "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
        "-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN",
        "-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN",
        "-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
    ]
    output = [r for r in nat if r.startswith("-A ISTIO_OUTPUT")]
    assert output[0] == "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN"
    assert output[-2:] == [
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
    ]
    assert "raw" not in iptables.rules(iptables.CaptureOptions())


def test_inclusions_and_exclusions_take_istios_places() -> None:
    options = iptables.CaptureOptions(
        include_inbound_ports="9080,9443",
        include_outbound_cidrs="10.96.0.0/12",
        exclude_outbound_cidrs=("10.100.0.0/16",),
        exclude_outbound_ports=(3306,),
        include_outbound_ports=(8443,),
    )
    nat = iptables.rules(options)["nat"]
    assert [r for r in nat if r.startswith("-A ISTIO_INBOUND") and "IN_REDIRECT" in r] == [
        "-A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_INBOUND -p tcp --dport 9443 -j ISTIO_IN_REDIRECT",
    ]
    output = [r for r in nat if r.startswith("-A ISTIO_OUTPUT")]
    assert output[0] == "-A ISTIO_OUTPUT -p tcp --dport 3306 -j RETURN"  # before anything
    assert output[-3:] == [
        "-A ISTIO_OUTPUT -d 10.100.0.0/16 -j RETURN",
        "-A ISTIO_OUTPUT -p tcp --dport 8443 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT",
    ]
    none = iptables.rules(iptables.CaptureOptions(include_inbound_ports=""))["nat"]
    assert "-A PREROUTING -p tcp -j ISTIO_INBOUND" not in none


def test_bad_options_name_their_flag() -> None:
    for options, flag in (
        (iptables.CaptureOptions(proxy_port=0), "--envoy-port"),
        (iptables.CaptureOptions(proxy_uid=(), proxy_gid=()), "--proxy-uid"),
        (iptables.CaptureOptions(redirect_dns=True, dns_servers=()), "--redirect-dns"),
    ):
        with pytest.raises(iptables.CaptureError, match=flag):
            iptables.rules(options)
    with pytest.raises(iptables.CaptureError, match="--include-outbound-cidrs"):
        iptables.rules(iptables.CaptureOptions(include_outbound_cidrs="10.0.0.0/33"))
    with pytest.raises(iptables.CaptureError, match="--include-inbound-ports"):
        iptables.rules(iptables.CaptureOptions(include_inbound_ports="80,http"))


def test_the_command_prints_what_iptables_restore_reads() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "xds_server",
            "iptables",
            "--redirect-dns",
            "--dns-servers",
            "10.0.0.10",
            "-u",
            "1337",
            "-g",
            "1337",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.startswith("*nat\n") and done.stdout.count("COMMIT") == 2
    mark = "-m comment --comment xds-server"
    assert f"-I OUTPUT 1 {mark} -p udp --dport 53 -j ISTIO_OUTPUT_DNS" in done.stdout
    redirect = "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d 10.0.0.10/32 -j REDIRECT --to-port 15053"
    assert redirect in done.stdout
    assert f"-A PREROUTING {mark} -p udp --sport 53 -s 10.0.0.10/32 -j CT --zone 1" in done.stdout
    # The app's query and the sidecar's answer share a zone (answers are un-NATed).
    assert f"-A OUTPUT {mark} -p udp --dport 53 -d 10.0.0.10/32 -j CT --zone 2" in done.stdout
    # TCP DNS goes to the nameserver as it is: the DNS listener is UDP only.
    assert "-A ISTIO_OUTPUT -p tcp --dport 53 -d 10.0.0.10/32 -j RETURN" in done.stdout


@pytest.fixture
def pod():
    """A pod namespace joined to an outside one, with the sidecar's stand-ins listening
    in the pod and the outside world's in the other."""
    need_namespaces()
    prefix = run_prefix()
    made, servers = [], []
    try:
        pod, outside = Namespace.create(f"{prefix}p"), Namespace.create(f"{prefix}o")
        made += [pod, outside]
        connect(pod, POD, outside, OUTSIDE)
        pod.ip("route", "add", "default", "via", OUTSIDE)
        for namespace, args in ((pod, ["sidecar"]), (outside, ["outside", OUTSIDE])):
            server = subprocess.Popen(
                namespace.argv(sys.executable, "-m", "tests.capture_probe", *args),
                stdout=subprocess.PIPE,
                text=True,
            )
            servers.append(server)
            assert server.stdout.readline().strip() == "ready"
        yield pod
    finally:
        for server in servers:
            server.kill()
            server.wait(timeout=10)
        for namespace in made:
            namespace.delete()


def _apply(pod: Namespace, *flags: str) -> None:
    pod.run(sys.executable, "-m", "xds_server", "iptables", "--apply", *flags)


def _ask(namespace: Namespace, uid: int, kind: str, host: str, port: int) -> str:
    """What a client running as `uid` hears back ("" when nobody answered)."""
    return probe(namespace, uid, kind, host, str(port))


def test_captured_traffic_reaches_the_sidecar_and_its_own_does_not(pod) -> None:
    _apply(pod)
    # The app's outbound TCP goes to 15001, which can read where it was going.
    assert _ask(pod, APP_UID, "tcp", OUTSIDE, 9080) == f"outbound {OUTSIDE}:9080"
    # The sidecar's own traffic leaves as it is.
    assert _ask(pod, PROXY_UID, "tcp", OUTSIDE, 9080) == "outside -"
    # Loopback stays loopback: the app reaching 127.0.0.1 is not captured.
    assert _ask(pod, APP_UID, "tcp", "127.0.0.1", 15021) == "health -"
    # The sidecar calling its own pod's address over loopback is inbound traffic.
    assert _ask(pod, PROXY_UID, "tcp", POD, 9080) == f"inbound {POD}:9080"


def test_inbound_traffic_is_captured_but_the_excluded_ports(pod) -> None:
    _apply(pod)
    outside = Namespace(pod.name[:-1] + "o")
    assert _ask(outside, APP_UID, "tcp", POD, 9080) == f"inbound {POD}:9080"
    assert _ask(outside, APP_UID, "tcp", POD, 15021) == "health -"  # excluded: health


def test_excluded_outbound_ports_and_cidrs_are_not_captured(pod) -> None:
    _apply(pod, "-o", "9080")
    assert _ask(pod, APP_UID, "tcp", OUTSIDE, 9080) == "outside -"
    _apply(pod, "-x", "198.18.0.0/24")  # applying again replaces the first set
    assert _ask(pod, APP_UID, "tcp", OUTSIDE, 9080) == "outside -"
    _apply(pod)
    assert _ask(pod, APP_UID, "tcp", OUTSIDE, 9080) == f"outbound {OUTSIDE}:9080"
    saved = pod.run("iptables-save", "-t", "nat")
    assert saved.count("-j ISTIO_OUTPUT") == 1, saved  # one set, not three


def test_dns_goes_to_the_sidecar_but_its_own_lookups(pod) -> None:
    _apply(pod, "--redirect-dns", "--dns-servers", OUTSIDE)
    assert _ask(pod, APP_UID, "udp", OUTSIDE, 53) == "dns"
    assert _ask(pod, PROXY_UID, "udp", OUTSIDE, 53) == "upstream"


@pytest.mark.parametrize("runtime", iptables.VARIANTS)
def test_dns_is_captured_ahead_of_a_container_runtimes_own_dns_rules(pod, runtime) -> None:
    # As Docker sets them in a container, with either iptables: 127.0.0.11:53 DNATed to
    # its embedded resolver. Ours go where the runtime's are, ahead of them.
    for rule in (
        "-N DOCKER_OUTPUT",
        "-A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT",
        "-A DOCKER_OUTPUT -d 127.0.0.11/32 -p udp --dport 53 -j DNAT "
        "--to-destination 127.0.0.11:35353",
    ):
        pod.run(runtime, "-t", "nat", *rule.split())
    resolver = subprocess.Popen(
        pod.argv(
            sys.executable,
            "-m",
            "tests.capture_probe",
            "udp-server",
            "127.0.0.11",
            "35353",
            "docker",
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert resolver.stdout.readline().strip() == "ready"
        assert _ask(pod, APP_UID, "udp", "127.0.0.11", 53) == "docker"  # before the rules
        _apply(pod, "--redirect-dns", "--capture-all-dns")
        assert "ISTIO_OUTPUT_DNS" in pod.run(f"{runtime}-save", "-t", "nat")
        assert _ask(pod, APP_UID, "udp", "127.0.0.11", 53) == "dns"
        assert _ask(pod, PROXY_UID, "udp", "127.0.0.11", 53) == "docker"
    finally:
        resolver.kill()
        resolver.wait(timeout=10)


def test_cleanup_removes_every_rule_it_added(pod) -> None:
    before = pod.run("iptables-save")
    _apply(pod, "--redirect-dns", "--dns-servers", OUTSIDE, "-c", "eth9")
    # Applying with other options, then cleaning up with none, leaves nothing behind.
    _apply(pod, "-c", "eth8")
    assert "eth9" not in pod.run("iptables-save")
    pod.run(sys.executable, "-m", "xds_server", "iptables", "--cleanup")
    assert _rules(pod.run("iptables-save")) == _rules(before)
    assert _ask(pod, APP_UID, "tcp", OUTSIDE, 9080) == "outside -"


def _rules(saved: str) -> list[str]:
    return sorted(line for line in saved.splitlines() if line.startswith(("-A", ":ISTIO")))
