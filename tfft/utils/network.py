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


# gs://bucket/... is read through the GCS endpoint; the bucket is no host name.
_GCS_HOST = "storage.googleapis.com"


def network_reachable(host: str, timeout: float = 3.0, port: int = 443) -> bool:
    """True when `host` accepts a connection on `port` (TLS, 443) within `timeout` seconds."""
    return _probe(host, port, timeout) is None


def download_address(url: str) -> tuple[str, int]:
    """The (host, port) a download from `url` connects to.

    `gs://bucket/path` is served by the GCS endpoint, `storage.googleapis.com`;
    an `https://host[:port]/path` URL by its host.

    Args:
        url: str. A `gs://` or `https://` URL.
    """
    parsed = urlparse(url)
    if parsed.scheme.lower() == "gs":
        return _GCS_HOST, 443
    if not parsed.hostname:
        raise ValueError(
            "The download URL has no host to connect to. Expected https://host/path or "
            f"gs://bucket/path. Received: url={url!r}"
        )
    try:
        port = parsed.port or 443
    except ValueError as error:
        raise ValueError(
            f"The download URL has an invalid port ({error}). Expected https://host/path "
            f"or https://host:port/path. Received: url={url!r}"
        ) from None
    return parsed.hostname, port


def _probe(host, port, timeout):
    """None when `host:port` answers, else the OSError the connection raised."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
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
        url: str. The download URL when known; the host serving it is tried
            instead (`storage.googleapis.com` for `gs://` URLs).
        timeout: float. Seconds to wait for the connection.
    """
    host, port = download_address(url) if url else (_HOSTS.get(source, "www.kaggle.com"), 443)
    error = _probe(host, port, timeout)
    if error is not None:
        raise NetworkUnavailableError(
            f"The backbone spec {spec!r} needs a download from {host}, but the network "
            f"is unreachable ({error.__class__.__name__}: {error}). Pass a local copy "
            f"instead: {local_hint}"
        )
