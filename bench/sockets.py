"""Where relayed bytes wait: unread data in the kernel's TCP receive queues, from /proc/net/tcp.

Data that a process has not read yet sits in its socket's receive queue. Summed over the
gateway's connections to the simulator, that is the backlog the gateway has not taken in; summed
over the clients' connections to the gateway, the backlog the clients have not read. Sampled
during a run, the two peaks say which side could not keep up. (What the gateway has read but grpc
has not yet written is inside the gateway process, not seen here.)
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.usage import Sampler

_ESTABLISHED = "01"


def unread_by_remote_port(ports: tuple[int, ...]) -> dict[int, int]:
    """For each of ``ports``: bytes waiting unread in established IPv4 sockets connected to that port."""
    totals = dict.fromkeys(ports, 0)
    with open("/proc/net/tcp") as f:
        next(f)  # the header
        for line in f:
            fields = line.split()
            if fields[3] != _ESTABLISHED:
                continue
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port in totals:
                totals[remote_port] += int(fields[4].split(":")[1], 16)
    return totals


@dataclass
class Backlog:
    """Peak unread bytes: at the gateway (from the simulator) and at the clients (from the gateway)."""

    gateway: int = 0
    clients: int = 0


class BacklogSampler(Sampler):
    """Samples the backlogs every ``interval`` while running: ``async with BacklogSampler(...) as b``."""

    def __init__(self, simulator_port: int, gateway_port: int, interval: float = 0.5) -> None:
        super().__init__(interval)
        self._ports = (simulator_port, gateway_port)
        self.peak = Backlog()

    def sample(self) -> None:
        simulator, gateway = self._ports
        unread = unread_by_remote_port(self._ports)
        self.peak.gateway = max(self.peak.gateway, unread[simulator])
        self.peak.clients = max(self.peak.clients, unread[gateway])
