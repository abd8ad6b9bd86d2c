"""One redaction for every error text bound for the ledger, gate tables, reports and logs: no signed-URL secrets.

Signed hrefs (Azure SAS `?sv=..&sig=..`, S3/GCS presigned `X-Amz-Signature=..`, `token=..`) carry
credentials in their query string, and library exception texts or a server's reason phrase can repeat
them anywhere in a message. `redact` drops every URL's query string and masks secret-looking
parameters wherever they appear, so what is stored or printed names the file but never the key.
"""

from __future__ import annotations

import re

_URL_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#'\"<>]*)\?[^\s#'\"<>]*", re.IGNORECASE)
_SECRET_PARAM = re.compile(
    r"\b(sig|signature|token|access_token|id_token|se|st|sp|sv|sr|spr|srt|ss|skoid|sktid|skt|ske|sks|skv|"
    r"key|api_key|apikey|password|x-amz-[a-z-]+|x-goog-[a-z-]+)=[^&\s'\"<>;,)]*",
    re.IGNORECASE,
)
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+")


def redact(text: str) -> str:
    """`text` without URL query strings, secret-looking `name=value` parameters or bearer tokens."""
    text = _URL_QUERY.sub(r"\1", text)
    text = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}=<redacted>", text)
    return _BEARER.sub(lambda m: f"{m.group(1)} <redacted>", text)
