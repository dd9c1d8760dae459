"""Instances from DNS (dnspython): A/AAAA records, or SRV records, re-resolved at their TTL.

    from codomyrmex.service_mesh.discovery import Resolver
    from codomyrmex.service_mesh.integrations.dns import DnsSource

    source = DnsSource("orders.internal", port=8080)                 # A and AAAA
    source = DnsSource("_http._tcp.orders.internal", record="SRV")   # port from the record
    Resolver(source, balancer).start()

Each address becomes one instance, ``id`` ``"host:port"`` (``"[v6]:port"``).
For SRV, the lowest priority number is the preferred group: its records get
weight ``srv_weight`` (a weight of 0 counts as 0.1, RFC 2782's "very small
chance"), each following group that times ``backup_factor`` (default 0.001;
0 leaves backups out). Weights matter to WEIGHTED, POWER_OF_TWO, PEAK_EWMA
and the hash strategies; ROUND_ROBIN and RANDOM treat every instance alike.
The record's priority, weight and target are in the instance's metadata.

The next resolution is due when the answer's TTL runs out, within
``[min_interval, max_interval]``; while resolution fails (timeout, NXDOMAIN, no
answer, an answer dnspython cannot parse, records that make no instance) the
resolver keeps the last known good list and retries every ``retry_interval``.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from ._extras import missing_extra

try:
    import dns.exception
    import dns.inet
    import dns.rdatatype
    import dns.resolver
except ImportError as exc:
    raise missing_extra(__name__, "dns", exc) from exc

from .._validate import check_int, check_number, check_str
from ..discovery import PollingSource, Resolution
from ..load_balancer import ServiceInstance

__all__ = ["DnsResolutionError", "DnsSource"]

logger = logging.getLogger("codomyrmex.service_mesh.discovery")

_RECORDS = ("A", "AAAA", "A+AAAA", "SRV")


class DnsResolutionError(Exception):
    """DNS gave no usable answer (the resolver keeps its last known good list)."""


def _address_id(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DnsSource(PollingSource):
    """A discovery source resolving ``name`` by DNS.

    - ``record``: ``"A+AAAA"`` (default), ``"A"``, ``"AAAA"`` or ``"SRV"``.
    - ``port``: the instances' port for address records (SRV records carry their own).
    - ``nameservers`` and ``nameserver_port``: ask these servers instead of the
      system's (``/etc/resolv.conf``).
    - ``timeout``: seconds for one whole resolution.
    - ``min_interval``, ``max_interval``, ``retry_interval``: :class:`PollingSource`'s, with
      its defaults.
    """

    def __init__(
        self,
        name: str,
        *,
        record: str = "A+AAAA",
        port: int | None = None,
        nameservers: list[str] | None = None,
        nameserver_port: int = 53,
        timeout: float = 2.0,
        backup_factor: float = 0.001,
        **intervals: float,
    ) -> None:
        super().__init__(**intervals)  # min_interval, max_interval, retry_interval
        self.name = check_str("name", name)
        if record not in _RECORDS:
            raise ValueError(f"record must be one of {', '.join(_RECORDS)}; got {record!r}")
        self.record = record
        if record == "SRV":
            if port is not None:
                raise ValueError(f"port must be None for SRV (the record has it), got {port!r}")
        else:
            if port is None:
                raise ValueError(f"port must be given for {record} records, got None")
            check_int("port", port, 1)
            if port > 65535:
                raise ValueError(f"port must be <= 65535, got {port!r}")
        self.port = port
        self.timeout = check_number("timeout", timeout, 0.001)
        self.backup_factor = check_number("backup_factor", backup_factor, 0.0)
        if self.backup_factor > 1.0:
            raise ValueError(f"backup_factor must be <= 1, got {backup_factor!r}")
        check_int("nameserver_port", nameserver_port, 1)
        self._resolver = dns.resolver.Resolver(configure=nameservers is None)
        if nameservers is not None:
            if not isinstance(nameservers, list) or not nameservers:
                raise ValueError(f"nameservers must be a non-empty list, got {nameservers!r}")
            for server in nameservers:
                if not isinstance(server, str) or not dns.inet.is_address(server):
                    raise ValueError(f"nameservers must hold IP addresses, got {server!r}")
            self._resolver.nameservers = list(nameservers)
        self._resolver.port = nameserver_port
        self._resolver.cache = None
        self._where = "" if nameservers is None else f" @{nameservers[0]}:{nameserver_port}"

    @property
    def description(self) -> str:
        return f"dns {self.record} {self.name}{self._where}"

    def __repr__(self) -> str:
        return f"DnsSource({self.description!r})"

    def resolve(self) -> Resolution:
        if self.record == "SRV":
            return self._resolve_srv()
        port = self.port
        assert port is not None
        kinds = ("A", "AAAA") if self.record == "A+AAAA" else (self.record,)
        addresses, ttl = self._addresses(self.name, kinds)
        instances = tuple(
            ServiceInstance(_address_id(host, port), host, port, metadata={"dns_name": self.name})
            for host in addresses
        )
        return Resolution(instances, ttl)

    # -- internals ------------------------------------------------------------------

    def _query(self, name: str, kind: str) -> Any | None:
        """One query: its answer, or None for "no such records" (raises for failures)."""
        try:
            return self._resolver.resolve(name, kind, lifetime=self.timeout, search=False)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return None
        except dns.exception.DNSException as exc:
            raise DnsResolutionError(f"{kind} {name}: {type(exc).__name__}: {exc}") from exc

    def _addresses(self, name: str, kinds: tuple[str, ...]) -> tuple[list[str], float]:
        found: list[str] = []
        ttl = float("inf")
        for kind in kinds:
            answer = self._query(name, kind)
            if answer is None:
                continue
            ttl = min(ttl, float(answer.rrset.ttl))
            for rdata in answer:
                host = _valid_ip(getattr(rdata, "address", None))
                if host is not None and host not in found:
                    found.append(host)
        if not found:
            raise DnsResolutionError(f"no {'/'.join(kinds)} records for {name}")
        return found, ttl

    def _resolve_srv(self) -> Resolution:
        answer = self._query(self.name, "SRV")
        if answer is None:
            raise DnsResolutionError(f"no SRV records for {self.name}")
        ttl = float(answer.rrset.ttl)
        records = sorted(answer, key=lambda r: (r.priority, -r.weight, str(r.target)))
        ranks = {p: i for i, p in enumerate(sorted({r.priority for r in records}))}
        instances: dict[str, ServiceInstance] = {}
        for rdata in records:
            target = rdata.target.to_text(omit_final_dot=True)
            rank = ranks[rdata.priority]
            factor = self.backup_factor**rank
            if rdata.port < 1 or not target or target == "." or factor == 0.0:
                if rank == 0:
                    logger.warning("%s: ignoring SRV record %s", self.description, rdata)
                continue
            try:
                hosts, host_ttl = self._target_addresses(target)
            except DnsResolutionError as exc:
                logger.warning("%s: SRV target unresolved (%s)", self.description, exc)
                continue
            ttl = min(ttl, host_ttl)
            weight = (rdata.weight if rdata.weight > 0 else 0.1) * factor
            for host in hosts:
                instance_id = _address_id(host, rdata.port)
                if instance_id in instances:
                    continue
                instances[instance_id] = ServiceInstance(
                    instance_id,
                    host,
                    rdata.port,
                    weight=weight,
                    metadata={
                        "dns_name": self.name,
                        "target": target,
                        "priority": rdata.priority,
                        "srv_weight": rdata.weight,
                    },
                )
        if not instances:
            raise DnsResolutionError(f"SRV records for {self.name} make no usable instance")
        return Resolution(tuple(instances.values()), ttl)

    def _target_addresses(self, target: str) -> tuple[list[str], float]:
        host = _valid_ip(target)
        if host is not None:
            return [host], float("inf")
        return self._addresses(target, ("A", "AAAA"))


def _valid_ip(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None
