"""The local web server (issue 13, items 14, 16-18): only the app's own host names are answered (DNS
rebinding), nothing of the user's is readable or changeable before login, bad ports are refused by name,
and a password on the command line is warned about. Real launched apps, raw HTTP requests."""

import http.client
import json
import re
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from conftest import free_port

from charlora.ui.app import build_app, parse_args, serve

REPO = Path(__file__).resolve().parents[1]
SECRET_PRESET = "my-secret-character-preset"


def request(port, method, path, host=None, body=None, headers=None, whole=True):
    """(status, headers, body text) of one raw request; `host` forges the Host header. `whole=False` reads
    only what has arrived (a stream such as the heartbeat never ends)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        all_headers = dict(headers or {})
        if host is not None:
            all_headers["Host"] = host
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        text = response.read() if whole else response.read1(65536)
        return response.status, response.getheaders(), text.decode("utf-8", "replace")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def open_app():
    demo = build_app()
    port = free_port()
    serve(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    yield port
    demo.close()


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:{port}", "127.0.0.1.attacker.example",
                                  "localhost.attacker.example:{port}", "192.168.1.20:{port}", ""])
def test_a_forged_host_is_refused(open_app, host):
    status, _, text = request(open_app, "GET", "/config", host=host.format(port=open_app))
    assert status == 403 and "is not allowed" in text and "--allow-host" in text
    # nothing can be started either
    status, _, _ = request(open_app, "POST", "/gradio_api/queue/join", host=host.format(port=open_app),
                           body=b"{}", headers={"Content-Type": "application/json"})
    assert status == 403


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "[::1]:{port}", "127.0.0.1"])
def test_loopback_names_are_served(open_app, host):
    status, _, text = request(open_app, "GET", "/config", host=host.format(port=open_app))
    assert status == 200 and json.loads(text)["components"]


def test_allowed_hosts_are_served():
    demo = build_app()
    port = free_port()
    serve(demo, "127.0.0.1", port, allowed_hosts=["studio.lan"], prevent_thread_lock=True, quiet=True)
    try:
        for host in (f"studio.lan:{port}", "Studio.LAN", "localhost"):
            assert request(port, "GET", "/config", host=host)[0] == 200, host
        assert request(port, "GET", "/config", host="studio.lan.attacker.example")[0] == 403
    finally:
        demo.close()


def test_allow_host_is_an_option():
    assert parse_args(["--allow-host", "studio.lan", "--allow-host", "pc"]).allow_host == ["studio.lan", "pc"]
    assert parse_args([]).allow_host == []


@pytest.fixture(scope="module")
def auth_app(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("home")
    mp.setenv("CHARLORA_HOME", str(home))
    (home / "presets").mkdir()
    (home / "presets" / f"{SECRET_PRESET}.json").write_text("{}")
    demo = build_app()
    port = free_port()
    serve(demo, "127.0.0.1", port, auth=[("me", "pw")], prevent_thread_lock=True, quiet=True)
    yield port
    demo.close()
    mp.undo()


def login_cookie(port) -> str:
    body = urllib.parse.urlencode({"username": "me", "password": "pw"})
    status, headers, _ = request(port, "POST", "/login", body=body,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    return "; ".join(v.split(";", 1)[0] for k, v in headers if k.lower() == "set-cookie")


def test_the_login_page_shows_nothing_of_the_users(auth_app):
    status, _, page = request(auth_app, "GET", "/")
    assert status == 200 and '"auth_required":true' in page.replace(" ", "")
    assert SECRET_PRESET not in page and "window.gradio_api_info = null;" in page
    # its scripts and styles load, so the login form can show
    asset = re.search(r'(?:src|href)="\./(assets/[^"]+\.js)"', page).group(1)
    assert request(auth_app, "GET", "/" + asset)[0] == 200
    # after login the same page has the app (and the preset), so the check above means something
    status, _, page = request(auth_app, "GET", "/", headers={"Cookie": login_cookie(auth_app)})
    assert status == 200 and SECRET_PRESET in page


@pytest.mark.parametrize("method,path", [
    ("GET", "/config"), ("GET", "/gradio_api/info"), ("GET", "/gradio_api/openapi.json"),
    ("POST", "/gradio_api/reset"), ("POST", "/gradio_api/cancel"), ("GET", "/gradio_api/heartbeat/abc"),
    ("POST", "/gradio_api/queue/join"), ("GET", "/gradio_api/app_id"), ("GET", "/monitoring/abc"),
    ("POST", "/gradio_api/upload"),
])
def test_nothing_is_readable_or_changeable_before_login(auth_app, method, path):
    body = json.dumps({"session_hash": "x", "fn_index": 0, "event_id": "e"}).encode() if method == "POST" else None
    status, _, text = request(auth_app, method, path, body=body, headers={"Content-Type": "application/json"},
                              whole=False)
    assert status == 401 and "Log in first" in text and SECRET_PRESET not in text


def test_after_login_the_api_answers(auth_app):
    cookie = login_cookie(auth_app)
    status, _, text = request(auth_app, "GET", "/config", headers={"Cookie": cookie})
    assert status == 200 and SECRET_PRESET in text
    assert request(auth_app, "POST", "/gradio_api/reset", body=b'{"event_id": "e"}',
                   headers={"Cookie": cookie, "Content-Type": "application/json"})[0] == 200


@pytest.mark.parametrize("port", ["99999", "0", "-1", "abc"])
def test_ports_outside_the_range_are_refused_by_name(capsys, port):
    with pytest.raises(SystemExit) as refused:
        parse_args(["--port", port])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert f"--port: {port!r}" in err or f"--port: {port} is outside 1-65535" in err


def test_a_port_in_use_is_named_and_auth_on_the_command_line_warned():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, str(REPO / "gui.py"), "--port", str(port), "--auth", "me:pw"],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"port {port} is already in use on 127.0.0.1" in result.stderr and "--port" in result.stderr
    assert "warning: the --auth password is visible" in result.stderr and "--auth-file" in result.stderr


def test_help_says_to_use_an_auth_file(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--auth-file FILE" in out and "visible to every user of this computer (ps" in out
