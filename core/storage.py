"""Whether Cloud Storage can be reached, and with which credentials, asked once before a command
touches a ``gs://`` path.

Without this, a machine that cannot reach Cloud Storage (no network, a mistyped
``STORAGE_EMULATOR_HOST``) waits out the storage client's 120 s of retries on every file it
opens and ends in a library's traceback; and a machine without Google Cloud credentials spends
about 25 s in Beam's retries, printing a traceback each time, before it reads anonymously.
"""

from __future__ import annotations

import os
import re
import socket
import urllib.request
from typing import Iterable, Optional
from urllib.parse import parse_qs, unquote, urlsplit

GCS_SCHEME = "gs://"
CONNECT_TIMEOUT_S = 10.0


def gcs_paths(values: Iterable) -> list[str]:
    """The ``gs://`` paths among option values or command-line words (``--flag=gs://...`` too;
    lists are looked into)."""
    found = []
    for value in values:
        if isinstance(value, (list, tuple)):
            found.extend(gcs_paths(value))
        elif isinstance(value, str):
            text = value.split("=", 1)[1] if value.startswith("--") and "=" in value else value
            if text.startswith(GCS_SCHEME):
                found.append(text)
    return found


def cloud_storage_endpoint() -> str:
    """The address the Cloud Storage client talks to: an emulator's, where
    ``STORAGE_EMULATOR_HOST`` (or ``API_ENDPOINT_OVERRIDE``) names one, else the public
    service of the configured universe."""
    for variable in ("STORAGE_EMULATOR_HOST", "API_ENDPOINT_OVERRIDE"):
        value = os.environ.get(variable)
        if value:
            return value if "://" in value else f"http://{value}"
    domain = os.environ.get("GOOGLE_CLOUD_UNIVERSE_DOMAIN") or "googleapis.com"
    return f"https://storage.{domain}"


def connection_problem(url: str, timeout: float = CONNECT_TIMEOUT_S) -> Optional[str]:
    """None when a TCP connection opens, within ``timeout`` seconds, to the host of ``url``, or
    to the proxy that HTTP clients would take for it (``HTTPS_PROXY``, ``NO_PROXY``); otherwise
    what went wrong, in a few words."""
    parts = urlsplit(url)
    if not parts.hostname:
        return f"{url!r} names no host"
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return f"{url!r} has no valid port"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as error:
        return f"the name {host} does not resolve ({error.strerror})"
    except socket.timeout:
        return f"{host}:{port} did not answer within {timeout:g} s"
    except OSError as error:
        return f"{host}:{port}: {error.strerror or error}"


def credentials_problem() -> Optional[tuple[str, bool]]:
    """None when Google's application default credentials are found; otherwise the reason in
    one line, and whether the user pointed at credentials that failed
    (``GOOGLE_APPLICATION_CREDENTIALS`` set), as opposed to having none at all."""
    try:
        import google.auth
        from google.auth.exceptions import GoogleAuthError
    except ImportError:
        return "google-auth is not installed", False
    try:
        google.auth.default()
    except GoogleAuthError as error:
        named = bool(os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"))
        reason = " ".join(str(error).split()) if named else "none were found"
        return reason, named
    return None


def settle_credentials(no_auth: bool) -> Optional[tuple[str, bool]]:
    """Settles, in this process, how Cloud Storage is read: anonymously at once under
    ``--no_auth``, for an emulator (``STORAGE_EMULATOR_HOST``, which takes none), or where no
    credentials are found at all (Beam would, after its retries); credentials found, or named
    but broken, are left to Beam. Returns ``credentials_problem()`` where it was asked (None
    under ``--no_auth`` and for an emulator), for the launcher to warn or refuse. The launcher
    and every Dask worker decide by this one rule."""
    from segbeam import compat

    if no_auth or os.environ.get("STORAGE_EMULATOR_HOST"):
        compat.settle_anonymous_gcs_credentials()
        return None
    missing = credentials_problem()
    if missing is not None and not missing[1]:
        compat.settle_anonymous_gcs_credentials()
    return missing


def access_refusal(error: BaseException) -> Optional[tuple[Optional[str], str]]:
    """Where ``error``, or one it wraps (a BeamIOError's per-path errors too), is Cloud Storage
    refusing access (a 401 or 403 answer; anonymous credentials asked for what is not public):
    the path it names, where one does, and the reason in one line. None for any other error."""
    anonymous = _anonymous_refusal_types()
    seen: set[int] = set()
    pending: list[tuple[Optional[str], BaseException]] = [(None, error)]
    while pending:
        path, current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, anonymous[:1]):
            return path, "no credentials were used, and it is not public"
        if isinstance(current, anonymous[1:]):
            return path, f"the credentials could not be refreshed ({_one_line(current)})"
        response = getattr(current, "response", None)
        status = getattr(current, "code", None) or getattr(response, "status_code", None)
        if status in (401, 403) and type(current).__module__.startswith("google."):
            text = _one_line(f"{current} {getattr(response, 'text', '')}")
            said = _SERVICE_MESSAGE.search(text) or _AFTER_URL.search(text)
            reason = f"{status} {said[1] if said else 'refused'}".rstrip(".")
            return path or _requested_path(f"{text} {getattr(response, 'url', '')}"), reason
        details = getattr(current, "exception_details", None)
        if isinstance(details, dict):
            pending += [(str(key), value) for key, value in details.items()
                        if isinstance(value, BaseException)]
        pending += [(path, linked) for linked in (current.__cause__, current.__context__)
                    if linked is not None]
    return None


def _one_line(value) -> str:
    return " ".join(str(value).split())


# The service's words: in a JSON error body, or after the request in the client's message
# ("403 GET https://...: ..."); and the object a JSON API request names.
_SERVICE_MESSAGE = re.compile(r'"message":\s*"([^"]+)"')
_AFTER_URL = re.compile(r"\b(?:GET|POST|PUT|PATCH|DELETE) \S+: ([^{(]+)")
_REQUEST = re.compile(r"/b/(?P<bucket>[^/?\s]+)/o(?:/(?P<object>[^?\s:]+))?"
                      r"(?:\?(?P<query>[^\s:]*))?")


def _requested_path(text: str) -> Optional[str]:
    found = _REQUEST.search(text)
    if not found:
        return None
    query = parse_qs(found["query"] or "")
    name = unquote(found["object"] or "") or (query.get("name") or query.get("prefix") or [""])[0]
    return f"gs://{found['bucket']}/{name}"


def _anonymous_refusal_types() -> tuple[type, ...]:
    """google-auth's errors for credentials asked to refresh after a 401: anonymous ones
    (InvalidOperation), then any (RefreshError)."""
    try:
        from google.auth.exceptions import InvalidOperation, RefreshError
    except ImportError:
        return ()
    return InvalidOperation, RefreshError
