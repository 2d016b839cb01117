"""The network probe asks the host that will serve the download, with the socket mocked."""

import re
import socket

import pytest

from tfft.utils import network
from tfft.utils.network import NetworkUnavailableError, require_network


@pytest.fixture
def probed(monkeypatch):
    """Records each probe's address; every host is unreachable."""
    addresses = []

    def create_connection(address, *args, **kwargs):
        addresses.append(address)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return addresses


@pytest.mark.parametrize(
    ("url", "address"),
    [
        # A GCS bucket is not a host: gs:// downloads come from the GCS endpoint.
        ("gs://my-bucket/models/tiny/1", ("storage.googleapis.com", 443)),
        ("gs://tfhub-modules/google/imagenet/x.tar.gz", ("storage.googleapis.com", 443)),
        ("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5",
         ("tfhub.dev", 443)),
        ("HTTPS://WWW.Kaggle.com/models/google/x", ("www.kaggle.com", 443)),
        ("https://models.example:8443/m", ("models.example", 8443)),
    ],
)
def test_probe_asks_the_download_host(probed, url, address):
    with pytest.raises(NetworkUnavailableError, match=re.escape(address[0])):
        require_network("tfhub", f"tfhub:{url}", "tfhub:/path", url=url)
    assert probed == [address]


def test_probe_without_url_asks_the_source_host(probed):
    with pytest.raises(NetworkUnavailableError, match=re.escape("storage.googleapis.com")):
        require_network("keras_app", "keras_app:mobilenet_v2", "a local file")
    assert probed == [("storage.googleapis.com", 443)]


def test_reachable_gcs_handle_passes(monkeypatch):
    addresses = []

    class _Connection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def create_connection(address, *args, **kwargs):
        addresses.append(address)
        return _Connection()

    monkeypatch.setattr(socket, "create_connection", create_connection)
    require_network("tfhub", "tfhub:gs://bucket/m", "tfhub:/path", url="gs://bucket/m")
    assert addresses == [("storage.googleapis.com", 443)]
    assert network.network_reachable("tfhub.dev")


def test_url_without_host_or_with_a_bad_port_is_a_clear_error(probed):
    with pytest.raises(ValueError, match="no host"):
        require_network("tfhub", "tfhub:https:///m", "tfhub:/path", url="https:///m")
    assert probed == []
    with pytest.raises(ValueError, match="invalid port"):
        require_network("tfhub", "tfhub:https://h:99999/m", "tfhub:/path", url="https://h:99999/m")
    assert probed == []
