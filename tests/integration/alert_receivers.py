"""Real receivers for alert channels: an HTTP server (Slack and webhooks) and an SMTP server."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from fraudstream.adapters.alert_channels import verify_signature
from fraudstream.stack.process import free_port


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    signed: bool | None
    """Whether the HMAC signature verified (None: no secret to check against)."""

    @property
    def alert_ids(self) -> list[int]:
        value = self.headers.get("X-Fraudstream-Alert-Ids", "")
        return [int(part) for part in value.split(",") if part]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpReceiver:
    """Accepts POSTs on any path and records them; `up` False answers 503 instead. With
    `hold_after` set, the request after that many is kept waiting until `release` is set."""

    secret: bytes | None = None
    up: bool = True
    hold_after: int | None = None
    requests: list[Request] = field(default_factory=list)
    refused: int = 0
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ids(self, path: str | None = None) -> list[int]:
        return [i for r in list(self.requests) if path in (None, r.path) for i in r.alert_ids]

    def _handle(self, handler: BaseHTTPRequestHandler) -> int:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        if not self.up:
            self.refused += 1
            return 503
        if self.hold_after is not None and len(self.requests) == self.hold_after:
            self.holding.set()
            self.release.wait(60)
        headers = dict(handler.headers.items())
        signed = None if self.secret is None else verify_signature(self.secret, headers, body)
        self.requests.append(Request(handler.path, headers, body, time.monotonic(), signed))
        return 200


@contextmanager
def http_receiver(**options: Any) -> Iterator[HttpReceiver]:
    receiver = HttpReceiver(**options)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            status = receiver._handle(self)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.shutdown()
        server.server_close()


@dataclass
class Mailbox:
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[list[str]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.envelopes.append(list(envelope.rcpt_tos))
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m, rcpt in zip(self.messages, self.envelopes, strict=True) if address in rcpt]


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl command."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@contextmanager
def smtp_server(
    tls: tuple[Path, Path] | None = None,
    login: tuple[str, str] | None = None,
    implicit_tls: bool = False,
) -> Iterator[tuple[Mailbox, int]]:
    """aiosmtpd on a free port: STARTTLS with `tls` (cert, key), or TLS from the first byte
    with `implicit_tls` too; LOGIN/PLAIN with `login`."""
    import ssl

    mailbox = Mailbox()
    options: dict[str, Any] = {}
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        if implicit_tls:
            options.update(ssl_context=context)
        else:
            options.update(tls_context=context, require_starttls=True)
    if login is not None:

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any):  # type: ignore[no-untyped-def]
            ok = (
                isinstance(auth, LoginPassword)
                and (auth.login.decode(), auth.password.decode()) == login
            )
            if ok:
                mailbox.logins.append(auth.login.decode())
            return AuthResult(success=ok)

        # with implicit TLS aiosmtpd does not see the session as TLS, though it is
        require_tls = tls is not None and not implicit_tls
        options.update(authenticator=authenticate, auth_require_tls=require_tls)
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()
