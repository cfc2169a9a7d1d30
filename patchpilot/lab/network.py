"""The lab's network: one bridge on this machine, one network namespace and veth pair per host."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from patchpilot.errors import BadInputError
from patchpilot.lab.system import run

log = logging.getLogger(__name__)

BRIDGE = "ppbr0"
NETNS_PREFIX = "pp-"
VETH_PREFIX = "ppv"
FIRST_HOST_OFFSET = 10  # .1 is the bridge; hosts start at .11


def parse_subnet(subnet: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as exc:
        raise BadInputError(
            f"invalid lab subnet {subnet!r}: {exc}",
            hint="use a private IPv4 network, e.g. 10.213.0.0/24",
        ) from exc
    unusable = net.is_loopback or net.is_link_local or net.is_unspecified or net.is_multicast
    if not net.is_private or unusable or net.prefixlen > 28:
        raise BadInputError(
            f"lab subnet {subnet} must be a private IPv4 network of /28 or larger",
            hint="e.g. 10.213.0.0/24",
        )
    return net


def bridge_address(net: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return net.network_address + 1


def host_address(net: ipaddress.IPv4Network, index: int) -> ipaddress.IPv4Address:
    """Address of the index-th host (1-based); stable so re-running `up` keeps addresses."""
    addr = net.network_address + FIRST_HOST_OFFSET + index
    if addr >= net.broadcast_address:
        raise BadInputError(
            f"the lab subnet {net} has room for {capacity(net)} hosts, not {index}",
            hint="ask for fewer hosts or set a larger lab_subnet",
        )
    return addr


def capacity(net: ipaddress.IPv4Network) -> int:
    return max(0, net.num_addresses - FIRST_HOST_OFFSET - 2)


def netns_name(host: str) -> str:
    return f"{NETNS_PREFIX}{host}"


def veth_name(index: int) -> str:
    return f"{VETH_PREFIX}{index}"


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def ensure_bridge(net: ipaddress.IPv4Network) -> None:
    addr = f"{bridge_address(net)}/{net.prefixlen}"
    if not link_exists(BRIDGE):
        run(["ip", "link", "add", BRIDGE, "type", "bridge"], what="creating the lab bridge")
    have = run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE], what="reading bridge address")
    if addr not in have.stdout:
        run(["ip", "addr", "flush", "dev", BRIDGE], what="resetting bridge address")
        run(["ip", "addr", "add", addr, "dev", BRIDGE], what="addressing the lab bridge")
    run(["ip", "link", "set", BRIDGE, "up"], what="bringing the lab bridge up")


def list_netns() -> list[str]:
    out = run(["ip", "netns", "list"], what="listing network namespaces").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def ensure_host_network(
    host: str, index: int, address: ipaddress.IPv4Address, prefixlen: int
) -> None:
    """Namespace + veth (bridge side `ppvN`, host side `eth0`) with the host's address."""
    ns, veth = netns_name(host), veth_name(index)
    if ns not in list_netns():
        run(["ip", "netns", "add", ns], what=f"creating namespace {ns}")
    if not link_exists(veth):
        run(
            ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns],
            what=f"creating veth for {host}",
        )
    run(["ip", "link", "set", veth, "master", BRIDGE, "up"], what=f"attaching {host} to the bridge")
    run(["ip", "-n", ns, "link", "set", "lo", "up"], what=f"bringing up lo in {ns}")
    addrs = run(
        ["ip", "-n", ns, "-o", "-4", "addr", "show", "dev", "eth0"], what="reading address"
    ).stdout
    if f"{address}/{prefixlen}" not in addrs:
        run(["ip", "-n", ns, "addr", "flush", "dev", "eth0"], what=f"resetting {host} address")
        run(
            ["ip", "-n", ns, "addr", "add", f"{address}/{prefixlen}", "dev", "eth0"],
            what=f"addressing {host}",
        )
    run(["ip", "-n", ns, "link", "set", "eth0", "up"], what=f"bringing up eth0 of {host}")


def set_link(index: int, up: bool) -> None:
    """Cut (down) or restore (up) a host's cable on the bridge side."""
    run(
        ["ip", "link", "set", veth_name(index), "up" if up else "down"],
        what=f"setting {veth_name(index)} {'up' if up else 'down'}",
    )


def link_is_up(index: int) -> bool:
    path = Path(f"/sys/class/net/{veth_name(index)}/flags")
    try:
        return bool(int(path.read_text(), 16) & 0x1)
    except (OSError, ValueError):
        return False


def remove_host_network(host: str, index: int | None = None) -> None:
    if index is not None and link_exists(veth_name(index)):
        run(["ip", "link", "del", veth_name(index)], check=False)
    if netns_name(host) in list_netns():
        run(["ip", "netns", "del", netns_name(host)], check=False)


def leftover_links() -> list[str]:
    """Our veths and bridge, found by name, whatever state file exists or not."""
    names = [p.name for p in Path("/sys/class/net").iterdir()]
    return sorted(
        n for n in names if n == BRIDGE or (n.startswith(VETH_PREFIX) and n[3:].isdigit())
    )


def leftover_netns() -> list[str]:
    return [ns for ns in list_netns() if ns.startswith(NETNS_PREFIX)]


def remove_all(links: list[str] | None = None) -> None:
    for ns in leftover_netns():
        run(["ip", "netns", "del", ns], check=False)
    for name in links if links is not None else leftover_links():
        if name != BRIDGE:
            run(["ip", "link", "del", name], check=False)
    if link_exists(BRIDGE):
        run(["ip", "link", "del", BRIDGE], check=False)
