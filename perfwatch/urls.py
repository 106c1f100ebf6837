"""URLs that carry secrets: what of one may be shown, and its userinfo apart to send as credentials.

A URL setting may hold a password (``http://user:password@host``), a token in its query
(``?token=...``) or its fragment, or a secret path segment (Slack's
``hooks.slack.com/services/T../B../<secret>``, Discord's ``/api/webhooks/<id>/<token>``).
Everything perfwatch prints, logs or stores shows a URL through :func:`redact`, and any text
that may echo one (an exception, a server's answer) through :func:`scrub`.
"""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

HIDDEN = "***"
_TOKEN_SEGMENT_MIN = 16  # Slack's and Discord's secrets are 24 and 68 characters; their ids are shorter or all digits
_SCRUBBED_MIN = 4  # shorter fragments would blank out ordinary words (v=1 in "HTTP 401")


def _split(url: str) -> tuple[bool, SplitResult]:
    """(whether ``url`` lacks a scheme, its parts); host:port without a scheme parses as a netloc."""
    schemeless = "://" not in url
    return schemeless, urlsplit("//" + url if schemeless else url)


def _join(schemeless: bool, parts: SplitResult) -> str:
    joined = parts.geturl()
    return joined.removeprefix("//") if schemeless else joined


def _looks_like_token(segment: str) -> bool:
    return (len(segment) >= _TOKEN_SEGMENT_MIN and any(c.isdigit() for c in segment)
            and any(c.isalpha() for c in segment))


def redact(url: str) -> str:
    """``url`` as it may be shown: scheme://host[:port]/path, with userinfo, query, fragment and
    token-like path segments replaced by ``***``; an unparsable URL is ``***`` whole."""
    try:
        schemeless, parts = _split(url)
    except ValueError:
        return HIDDEN
    _, at, hostport = parts.netloc.rpartition("@")
    path = "/".join(HIDDEN if _looks_like_token(s) else s for s in parts.path.split("/"))
    shown = ("" if schemeless else f"{parts.scheme}://") + (f"{HIDDEN}@" if at else "") + hostport + path
    return shown + (f"?{HIDDEN}" if parts.query else "") + (f"#{HIDDEN}" if parts.fragment else "")


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """(``url`` without its userinfo, (user, password) percent-decoded, or None without userinfo);
    ``https://TOKEN@host`` gives the password ``""``."""
    schemeless, parts = _split(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, _, password = userinfo.partition(":")
    return _join(schemeless, parts._replace(netloc=hostport)), (unquote(user), unquote(password))


def _secrets(url: str) -> list[str]:
    """The fragments of ``url`` that must not be shown, raw and decoded."""
    try:
        _, parts = _split(url)
    except ValueError:
        return [url]
    userinfo, _, _ = parts.netloc.rpartition("@")
    pieces = [userinfo, *userinfo.split(":", 1), parts.query, parts.fragment]
    pieces += [value for _, value in parse_qsl(parts.query, keep_blank_values=True)]
    pieces += [s for s in parts.path.split("/") if _looks_like_token(s)]
    return pieces + [unquote(p) for p in pieces]


def scrub(text: str, url: str) -> str:
    """``text`` (an exception, a server's answer) with each secret of ``url`` of 4 or more characters
    hidden, longest first: an echoed request target reads /path?***."""
    for secret in sorted({s for s in _secrets(url) if len(s) >= _SCRUBBED_MIN}, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return text
