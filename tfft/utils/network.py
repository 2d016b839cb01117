"""A fast check that a download can happen, so offline runs fail in seconds."""

import socket
from urllib.parse import urlparse

_HOSTS = {
    "keras_hub": "www.kaggle.com",
    "tfhub": "www.kaggle.com",
    "keras_app": "storage.googleapis.com",
    "keras_cv": "www.kaggle.com",
}


class NetworkUnavailableError(OSError):
    """A backbone spec needs a download and the network cannot be reached."""


def network_reachable(host: str, timeout: float = 3.0) -> bool:
    """True when `host` accepts a TLS-port (443) connection within `timeout` seconds."""
    return _probe(host, timeout) is None


def _probe(host, timeout):
    """None when `host:443` answers, else the OSError the connection raised."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return None
    except OSError as error:
        return error


def require_network(
    source: str, spec: str, local_hint: str, url: str | None = None, timeout: float = 3.0
) -> None:
    """Raises `NetworkUnavailableError` unless the download host answers.

    Args:
        source: str. The backbone source, picks the host.
        spec: str. The spec the user gave, quoted in the message.
        local_hint: str. How to pass a local path instead.
        url: str. The download URL when known; its host is tried instead.
        timeout: float. Seconds to wait for the connection.
    """
    host = urlparse(url).hostname if url else _HOSTS.get(source, "www.kaggle.com")
    error = _probe(host, timeout)
    if error is not None:
        raise NetworkUnavailableError(
            f"The backbone spec {spec!r} needs a download from {host}, but the network "
            f"is unreachable ({error.__class__.__name__}: {error}). Pass a local copy "
            f"instead: {local_hint}"
        )
