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


def require_network(source, spec, local_hint, url=None, timeout=3.0):
    """Raises `NetworkUnavailableError` unless the download host answers.

    Args:
        source: str. The backbone source, picks the host.
        spec: str. The spec the user gave, quoted in the message.
        local_hint: str. How to pass a local path instead.
        url: str. The download URL when known; its host is tried instead.
        timeout: float. Seconds to wait for the connection.
    """
    host = urlparse(url).hostname if url else _HOSTS.get(source, "www.kaggle.com")
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return
    except OSError as error:
        raise NetworkUnavailableError(
            f"The backbone spec {spec!r} needs a download from {host}, but the network "
            f"is unreachable ({error.__class__.__name__}: {error}). Pass a local copy "
            f"instead: {local_hint}"
        ) from None
