"""Build and launch the CharLoRA app: four tabs, local and offline by default."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import re
import socket
import sys
from pathlib import Path

# Before gradio is imported: no analytics, no version check (offline, exit would wait ~27 s on DNS).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

TAB_NAMES = ("Dataset", "Parameters", "Training", "Evaluation")


def _quiet_gradio() -> None:
    """gradio 6.31's queue uses pandas options that pandas 3 deprecates: a warning per event, not ours."""
    import warnings

    warnings.filterwarnings("ignore", message=".*no_silent_downcasting.*")
    warnings.filterwarnings("ignore", message="The copy keyword is deprecated", module="gradio")


def theme():
    """Gradio's default theme with the system's sans-serif font."""
    import gradio as gr

    # the bundled Source Sans Pro drew some bold capitals in another face ("CharLoRᴀ", "VRᴀM") in
    # Chromium: the system's sans-serif has every glyph (and needs no download either)
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"])


# Tables wrap long cells instead of clipping them ("no caption ... caption").
CSS = """
.charlora-table td, .charlora-table th { white-space: normal !important; overflow-wrap: anywhere; }
.charlora-table td span, .charlora-table td div { white-space: normal !important; overflow: visible !important;
  text-overflow: clip !important; }
"""


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

# What the login page itself needs before login (with auth on): the page, its static files, the login
# form, and the startup call gradio's launch makes to itself. Everything else answers 401 until login.
PUBLIC_PATHS = frozenset({"/", "/login", "/login/", "/favicon.ico", "/manifest.json", "/robots.txt", "/theme.css",
                          "/gradio_api/theme.css", "/gradio_api/startup-events"})
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")
# gradio embeds the whole API description (every dropdown's choices: the user's preset names) even in
# the login page it serves before login
_API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.DOTALL)


def host_name(header: str) -> str:
    """'Example.COM:7860' -> 'example.com', '[::1]:7860' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0].rstrip(".") if header.count(":") == 1 else header.rstrip(".")


def host_allowed(header: str, allowed: frozenset, any_address: bool) -> bool:
    """Loopback names always; `allowed` names; with --listen any IP address (a DNS rebinding page always
    reaches the app through a name of its own, never an address)."""
    name = host_name(header)
    if name in LOOPBACK_NAMES or name in allowed:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or any_address


class GuardMiddleware:
    """ASGI middleware in front of every gradio route: refuses Host headers other than the app's own names
    (DNS rebinding: a web page the user visits could otherwise drive the app through 127.0.0.1), and with
    auth on, every path but the login page's until the browser has logged in."""

    def __init__(self, app, allowed_hosts=frozenset(), any_address=False, auth=False):
        self.app = app
        self.allowed_hosts = frozenset(host_name(h) for h in allowed_hosts)
        self.any_address = any_address
        self.auth = auth

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if not host_allowed(host, self.allowed_hosts, self.any_address):
            return await self._refuse(scope, send, 403, f"Host {host[:100]!r} is not allowed. Open the app at "
                                                        "http://127.0.0.1 (or start it with --allow-host NAME).\n")
        if not self.auth or self._logged_in(scope, headers):
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path == "/" and scope.get("method") == "GET":
            return await self.app(scope, receive, self._without_api_info(send))
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return await self.app(scope, receive, send)
        return await self._refuse(scope, send, 401, "Log in first: open the app's page and sign in.\n")

    @staticmethod
    def _logged_in(scope, headers) -> bool:
        from starlette.requests import cookie_parser

        app = scope.get("app")  # gradio's App (Starlette puts itself in the scope)
        if app is None or not hasattr(app, "tokens"):
            return False
        cookies = cookie_parser(headers.get("cookie", ""))
        token = cookies.get(f"access-token-{app.cookie_id}") or cookies.get(f"access-token-unsecure-{app.cookie_id}")
        return app.tokens.get(token) is not None

    @staticmethod
    async def _refuse(scope, send, status: int, text: str):
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        body = text.encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _without_api_info(send):
        """Wrap `send` so the page's embedded API description becomes null (the page loads it after login)."""
        start, chunks = None, []

        async def wrapped(message):
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = _API_INFO.sub(b"window.gradio_api_info = null;</script>", b"".join(chunks))
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        return wrapped


def serve(demo, host: str = "127.0.0.1", port: int = 7860, auth=None, allowed_hosts=(), **kwargs):
    """Launch the app (the tests use this too, so they see the same theme and styles).

    Requests are answered only for the app's own host names (loopback; with a non-loopback `host`, the
    machine's names and addresses) and `allowed_hosts`; with `auth`, nothing but the login page before login.
    """
    from starlette.middleware import Middleware

    names = set(allowed_hosts)
    listening = not host_allowed(host, frozenset(), False)
    if listening:
        names |= {host, socket.gethostname(), socket.getfqdn(), socket.gethostname() + ".local"}
    guard = Middleware(GuardMiddleware, allowed_hosts=frozenset(names), any_address=listening, auth=bool(auth))
    app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
    app_kwargs["middleware"] = [guard, *app_kwargs.get("middleware", [])]
    # server_name and share are explicit: GRADIO_SERVER_NAME / GRADIO_SHARE would override defaults
    quiet_queue(demo)
    return demo.launch(server_name=host, server_port=port, share=False, auth=auth, theme=theme(), css=CSS,
                       app_kwargs=app_kwargs, **kwargs)


def quiet_queue(demo) -> None:
    """gradio 6.31's queue loop wakes every 1 ms on Linux (4.3% of a core with no page open, competing with
    training on small machines); its Windows values (50 ms, 100 ms) cut that to 0.8% (docs/benchmarks.md).
    Private attributes: left alone where a Gradio version lacks them."""
    queue = getattr(demo, "_queue", None)
    for name, seconds in (("sleep_when_free", 0.05), ("progress_update_sleep_when_free", 0.1)):
        if queue is not None and hasattr(queue, name):
            setattr(queue, name, seconds)


def build_app():
    import gradio as gr

    _quiet_gradio()
    from . import dataset_tab, evaluation_tab, parameters_tab, training_tab

    with gr.Blocks(title="CharLoRA") as demo:
        gr.Markdown("# CharLoRA\nTurn a handful of pictures of a character into a Stable Diffusion 1.5 or SDXL LoRA.")
        with gr.Tabs():
            with gr.Tab("Dataset", id="dataset"):
                dataset = dataset_tab.build()
            with gr.Tab("Parameters", id="parameters"):
                params = parameters_tab.build()
            with gr.Tab("Training", id="training"):
                training = training_tab.build()
            with gr.Tab("Evaluation", id="evaluation"):
                evaluation = evaluation_tab.build()
        timer = gr.Timer(1.0)
        # events are wired once every tab exists: the Dataset and Training tabs read the Parameters controls
        parameters_tab.wire(params, demo)
        dataset_tab.wire(dataset, params)
        training_tab.wire(training, params, demo, timer)
        evaluation_tab.wire(evaluation, params, demo, timer)
    return demo


def read_auth(args) -> list[tuple[str, str]] | None:
    pairs = []
    if args.auth:
        pairs.append(args.auth)
    if args.auth_file:
        path = Path(args.auth_file)
        if not path.is_file():
            raise SystemExit(f"--auth-file {path}: no such file")
        pairs += [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not pairs:
        return None
    bad = [p for p in pairs if ":" not in p or p.startswith(":") or p.endswith(":")]
    if bad:
        raise SystemExit("--auth / --auth-file entries must look like USER:PASS")
    return [tuple(p.split(":", 1)) for p in pairs]


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number; give one from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is outside 1-65535; give a port like 7860")
    return port


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python gui.py", description="Start the CharLoRA app in your browser.",
        epilog="Logins: prefer --auth-file FILE (lines of USER:PASS, readable only by you: chmod 600 FILE). "
               "A password given with --auth is visible to every user of this computer (ps, /proc).")
    parser.add_argument("--port", type=port_number, default=7860, help="port, 1-65535 (default 7860)")
    parser.add_argument("--listen", action="store_true",
                        help="serve on every network interface (needs --auth-file or --auth); "
                             "default: this computer only")
    parser.add_argument("--auth-file", metavar="FILE",
                        help="require a login: a file of USER:PASS lines (the safe way; needed with --listen)")
    parser.add_argument("--auth", metavar="USER:PASS",
                        help="require this login; other users of this computer can read it with ps: "
                             "use --auth-file instead")
    parser.add_argument("--allow-host", metavar="NAME", action="append", default=[],
                        help="also answer requests for this host name (repeatable), e.g. a name in your hosts "
                             "file or a reverse proxy's; by default only 127.0.0.1, localhost and [::1] (and, with "
                             "--listen, this computer's names and addresses) are answered, so other web sites "
                             "cannot drive the app (DNS rebinding)")
    args = parser.parse_args(argv)
    if args.listen and not (args.auth or args.auth_file):
        parser.error("--listen makes the app reachable from other computers; give --auth USER:PASS or --auth-file")
    if args.auth and ":" not in args.auth:
        parser.error("--auth must look like USER:PASS")
    return args


def port_in_use(host: str, port: int) -> str | None:
    """A message when `port` cannot be served on `host`, else None (checked before the slow app build)."""
    with socket.socket() as probe:
        # as the server does: a port a closed app left in TIME_WAIT is free, one with a listener is not
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                other = port + 1 if port < 65535 else 7861
                return (f"CharLoRA: port {port} is already in use on {host} (another app, or CharLoRA already "
                        f"running: open http://127.0.0.1:{port}); choose another with --port, e.g. --port {other}")
            return f"CharLoRA: cannot serve on {host} port {port} ({exc.strerror}); choose another with --port"
    return None


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.auth:
        print("CharLoRA: warning: the --auth password is visible to every user of this computer (ps); "
              "put USER:PASS in a file only you can read and use --auth-file FILE instead", file=sys.stderr)
    auth = read_auth(args)
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    busy = port_in_use(host, args.port)
    if busy:
        print(busy, file=sys.stderr)
        raise SystemExit(2)
    demo = build_app()
    print(f"CharLoRA: starting on http://{host}:{args.port}", file=sys.stderr)
    try:
        serve(demo, host, args.port, auth, allowed_hosts=args.allow_host)
    except OSError as exc:
        # another program took the port between the check and the launch (gradio: "Cannot find empty port")
        print(port_in_use(host, args.port) or f"CharLoRA: cannot serve on port {args.port}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        from ..train import current_job

        job = current_job()
        if job.snapshot().running:
            print("CharLoRA: stopping the training run after its current step and saving...", file=sys.stderr)
            job.stop(save=True)
            job.wait()
