"""Advertise the page as ``_http._tcp`` over mDNS when the ``mdns`` extra (zeroconf) is there.

Imported lazily: without zeroconf the page runs as usual and one log line says why nobody is
told about it.
"""

from __future__ import annotations

import socket
from typing import Any


def _lan_addresses() -> list[str]:
    import ifaddr

    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                out.append(ip.ip)
    return out


class Advertiser:
    def __init__(self) -> None:
        self._zc: Any = None
        self._info: Any = None

    async def start(self, name: str, host: str, port: int, path: str = "/") -> list[str]:
        """Register the service; returns the addresses advertised. Raises ImportError without
        zeroconf and OSError when no multicast socket can be opened."""
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        addresses = [host] if host not in ("0.0.0.0", "::", "") else _lan_addresses()
        if not addresses:
            return []
        hostname = socket.gethostname().split(".")[0] or "spyoncino"
        info = AsyncServiceInfo(
            "_http._tcp.local.",
            f"{name}._http._tcp.local.",
            parsed_addresses=addresses,
            port=port,
            properties={"path": path},
            server=f"{hostname}.local.",
        )
        self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        await self._zc.async_register_service(info, allow_name_change=True)
        self._info = info
        return addresses

    async def stop(self) -> None:
        zc, info, self._zc, self._info = self._zc, self._info, None, None
        if zc is None:
            return
        try:
            if info is not None:
                await zc.async_unregister_service(info)
        finally:
            await zc.async_close()
