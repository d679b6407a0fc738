"""A Ray cluster's address, checked before a sweep starts: its form (HOST:PORT, ray://HOST:PORT,
auto, local) and, for a remote head, that something answers there within
RAY_CONNECT_TIMEOUT_S (ray.init itself retries an address that never answers for minutes)."""
from __future__ import annotations

import socket

RAY_CONNECT_TIMEOUT_S = 15.0  # how long a cluster's head may take to answer before we give up
_LOCAL_ADDRESSES = ("auto", "local")


def address_problem(address: str | None) -> str | None:
    """Why `address` is not a Ray address (HOST:PORT, ray://HOST:PORT, auto or local), or None."""
    if address is None or address in _LOCAL_ADDRESSES:
        return None
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if (not sep or not host or any(c.isspace() for c in host) or "/" in host
            or not port.isdigit() or not 0 < int(port) < 65536):
        return (f"{address!r} is not a Ray address: expected HOST:PORT of the head (e.g. "
                f"10.0.0.1:6379), ray://HOST:PORT, auto or local")
    return None


def _reach(address: str, timeout: float) -> None:
    """Give up on a head that does not answer within `timeout` s, in one line (ray.init itself
    retries for minutes)."""
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise RuntimeError(f"--address {address}: nothing answers at {host}:{port} within "
                           f"{timeout:g} s ({err.strerror or type(err).__name__}); is the head "
                           f"started (`ray start --head`)?") from None


def check_reachable(address: str | None, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """RuntimeError, one line, when `address` is malformed or its head does not answer."""
    problem = address_problem(address)
    if problem is not None:
        raise RuntimeError(f"--address: {problem}")
    if address is not None and address not in _LOCAL_ADDRESSES:
        _reach(address, timeout)
