"""Shared test setup: offline, one CPU thread, a tiny SD 1.5 model built once per session."""

import ipaddress
import os
import socket
from pathlib import Path

# Set before anything imports huggingface_hub / gradio, which read them at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
# The toy model and the toy scorer are unpacked/trained once into this cache (charlora.toy.cache), kept
# between runs, never in the user's home folder; CI may point it elsewhere.
os.environ.setdefault("CHARLORA_TOY_CACHE", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "toy"))

import pytest  # noqa: E402
import torch  # noqa: E402

# With 2 threads and other processes busy, steps got 30x slower (stack-notes).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from charlora.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    from charlora.models.tiny_sdxl import make_tiny_sdxl_model

    return make_tiny_sdxl_model(tmp_path_factory.mktemp("tiny-sdxl"))


def _is_loopback(address):
    if isinstance(address, (str, bytes)):
        return True  # AF_UNIX socket path: local by definition
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name that would need DNS


@pytest.fixture
def no_network(monkeypatch):
    """Any connection to a non-loopback address raises OSError, so a test proves it stays offline."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_create_connection = socket.create_connection
    real_getaddrinfo = socket.getaddrinfo

    def refuse(address):
        raise OSError(f"network disabled in this test: tried to reach {address!r}")

    def connect(self, address):
        if not _is_loopback(address):
            refuse(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if not _is_loopback(address):
            refuse(address)
        return real_connect_ex(self, address)

    def create_connection(address, *args, **kwargs):
        if not _is_loopback(address):
            refuse(address)
        return real_create_connection(address, *args, **kwargs)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_loopback((host.decode() if isinstance(host, bytes) else str(host), 0)):
            refuse(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def free_port():
    """A free TCP port on 127.0.0.1 for an app launched by a test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The user's real Kohya GUI config (their file, kept here as a fixture: a user's clone has only tests/).
SEED_CONFIG = Path(__file__).resolve().parent / "fixtures" / "seed-kohya-config.json"
