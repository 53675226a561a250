"""Sending email over SMTP: plain, STARTTLS or implicit TLS, with login when configured.

Used by the email alert channel and by `fraudstream report --email-to`. Messages are built by
the caller as `email.message.EmailMessage` (text and HTML alternatives, attachments); this
module only knows how to hand one to a server. Failures raise `SmtpUnavailable`, whose message
names the server and the reason, never the password.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

from fraudstream.config import EmailChannelSettings
from fraudstream.core.errors import FraudstreamError


class SmtpUnavailable(FraudstreamError):  # noqa: N818 - reads as what it is
    """The server could not be reached or refused the message; trying again later may work."""


def _tls_context(settings: EmailChannelSettings) -> ssl.SSLContext:
    cafile = None if settings.ca_file is None else str(settings.ca_file)
    return ssl.create_default_context(cafile=cafile)


def _connect(settings: EmailChannelSettings) -> smtplib.SMTP:
    if settings.security == "ssl":
        return smtplib.SMTP_SSL(
            settings.host, settings.port, timeout=settings.timeout_s, context=_tls_context(settings)
        )
    client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s)
    if settings.security == "starttls":
        client.starttls(context=_tls_context(settings))
    return client


def send_email(settings: EmailChannelSettings, message: EmailMessage) -> list[str]:
    """Deliver `message` to its `To` recipients (its `From` defaults to `settings.sender`).

    Returns the recipients the server refused while accepting the others (sending again would
    repeat the message to those that have it); all refused raises `SmtpUnavailable`."""
    if message["From"] is None:
        message["From"] = settings.sender
    where = f"smtp {settings.host}:{settings.port}"
    try:
        with _connect(settings) as client:
            if settings.username is not None and settings.password is not None:
                client.login(settings.username, settings.password.get_secret_value())
            refused = client.send_message(message)
    except (OSError, smtplib.SMTPException) as error:
        raise SmtpUnavailable(f"{where}: {type(error).__name__}: {_reason(error)}") from None
    return sorted(refused)


def _reason(error: BaseException) -> str:
    if isinstance(error, smtplib.SMTPResponseException):
        text = error.smtp_error.decode(errors="replace") if error.smtp_error else ""
        return f"{error.smtp_code} {text}".strip()
    return str(error) or type(error).__name__
