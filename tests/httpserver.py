"""A real HTTP server on 127.0.0.1 for download and STAC API tests, with scripted faults.

It serves files from a folder (with HTTP Range support, as object stores do), a tiny STAC API
(landing page with the item-search conformance class, `/search` returning a FeatureCollection, GET
and POST, paged with `next` links when `page_size` is set), and, per path, a queue of faults that the next
requests get: `404`, `500`, `stall` (send headers, then nothing for `stall_s`), `drop:N` (promise the
whole file, send N bytes, close), `corrupt` (flip a byte), `reset` (close without a response), `echo:403`
(an error status whose reason phrase repeats the request's path and query). Every request is logged as (method, path,
Range header) for assertions, its headers in `headers`. Files carry a strong ETag (a hash of the bytes) and
Last-Modified; a Range request whose `If-Range` does not match gets the whole file (200), as RFC 9110 says,
unless `honour_if_range` is off (a server that ignores it); `validators = False` serves neither header.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import operator
import threading
from collections import defaultdict, deque
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts under test) are expected; no tracebacks on stderr."""


class LoopbackServer:
    """Start with `with LoopbackServer(folder) as srv:`; `srv.url` is the base URL."""

    def __init__(self, folder: Path | None = None, *, stall_s: float = 5.0) -> None:
        self.folder = Path(folder) if folder else None
        self.stall_s = stall_s
        self.faults: dict[str, deque[str]] = defaultdict(deque)
        self.requests: list[tuple[str, str, str | None]] = []
        self.items: list[dict[str, Any]] = []
        self.require_query: str | None = None
        self.page_size: int | None = None
        """`/search` answers at most this many features a page, with a `next` link (token), as real APIs page."""
        self.headers: list[dict[str, str]] = []
        self.honour_if_range = True
        self.validators = True
        self.bytes_served: dict[str, int] = defaultdict(int)
        """Body bytes sent per path (GET answers), to measure what a windowed read transfers."""
        self._release = threading.Event()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def fail(self, path: str, *faults: str) -> None:
        """Queue faults for the next requests of `path` (e.g. "/a.tif", "500", "drop:100")."""
        self.faults[path].extend(faults)

    def release_stalls(self) -> None:
        """End every `stall` now (and let later ones return at once)."""
        self._release.set()

    def requests_for(self, path: str) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[1] == path]

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                return

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._dispatch("GET", None)

            def do_HEAD(self) -> None:  # noqa: N802 - the file's headers without its body
                self._head = True
                try:
                    self._dispatch("HEAD", None)
                finally:
                    self._head = False

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                self._dispatch("POST", body)

            def _dispatch(self, method: str, body: dict[str, Any] | None) -> None:
                parsed = urlparse(self.path)
                path = parsed.path
                server.requests.append((method, path, self.headers.get("Range")))
                server.headers.append(dict(self.headers))
                fault = server.faults[path].popleft() if server.faults[path] else None
                if fault == "reset":
                    self.close_connection = True
                    return None
                if fault and fault.startswith("echo:"):  # an error whose reason phrase repeats the signed URL
                    self.send_response(int(fault[5:]), f"denied {self.path}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if fault in ("404", "500"):
                    return self._send(int(fault), b"fault", "text/plain")
                if path == "/api":
                    return self._json(server._landing())
                if path == "/api/search":
                    params = body if body is not None else {k: v[0] for k, v in parse_qs(parsed.query).items()}
                    return self._json(server._search(params, method))
                if server.require_query and server.require_query not in parsed.query:
                    return self._send(403, b"unsigned", "text/plain")
                return self._file(path, fault)

            def _json(self, obj: dict[str, Any]) -> None:
                self._send(200, json.dumps(obj).encode(), "application/json")

            def _send(self, status: int, data: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _file(self, path: str, fault: str | None) -> None:
                target = (server.folder / path.lstrip("/")).resolve() if server.folder else None
                if target is None or not target.is_file():
                    return self._send(404, b"not found", "text/plain")
                data = target.read_bytes()
                validators = server._validators(target, data)
                if fault == "corrupt":
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start, end = 0, len(data) - 1
                rng = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                if if_range and server.honour_if_range and if_range not in validators.values():
                    rng = None  # the file changed since the client's partial copy: send all of it
                if rng and rng.startswith("bytes="):
                    first, _, last = rng[6:].partition("-")
                    start = int(first)
                    end = min(int(last), len(data) - 1) if last.strip() else end
                    if start >= len(data):
                        return self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
                body = data[start : end + 1]
                partial = start > 0 or end < len(data) - 1
                self.send_response(206 if partial else 200)
                self.send_header("Content-Type", "image/tiff")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                for k, v in validators.items():
                    self.send_header(k, v)
                if partial:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if getattr(self, "_head", False):
                    return None
                if fault == "stall":
                    self.wfile.flush()
                    server._release.wait(server.stall_s)
                    self.close_connection = True
                    return
                if fault and fault.startswith("drop:"):
                    self.wfile.write(body[: int(fault[5:])])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)
                server.bytes_served[path] += len(body)

        return Handler

    def _validators(self, target: Path, data: bytes) -> dict[str, str]:
        """The ETag and Last-Modified headers of a file (none when `validators` is off)."""
        if not self.validators:
            return {}
        modified = dt.datetime.fromtimestamp(target.stat().st_mtime, dt.UTC)
        return {"ETag": f'"{hashlib.sha256(data).hexdigest()[:16]}"', "Last-Modified": format_datetime(modified, True)}

    def _landing(self) -> dict[str, Any]:
        return {
            "type": "Catalog",
            "stac_version": "1.0.0",
            "id": "loopback",
            "description": "tiny STAC API for tests",
            "conformsTo": [
                "https://api.stacspec.org/v1.0.0/core",
                "https://api.stacspec.org/v1.0.0/item-search",
                "https://api.stacspec.org/v1.0.0/item-search#query",
            ],
            "links": [
                {"rel": "self", "href": f"{self.url}/api", "type": "application/json"},
                {"rel": "root", "href": f"{self.url}/api", "type": "application/json"},
                {"rel": "search", "href": f"{self.url}/api/search", "type": "application/geo+json", "method": "GET"},
                {"rel": "search", "href": f"{self.url}/api/search", "type": "application/geo+json", "method": "POST"},
            ],
        }

    def _search(self, params: dict[str, Any], method: str = "GET") -> dict[str, Any]:
        """The matching items as a FeatureCollection: one page of `page_size` (or the client's `limit`)."""
        features = self._matching(params)
        size = min(int(params.get("limit") or len(features) or 1), self.page_size or len(features) or 1)
        start = int(params.get("token") or 0)
        page = {"type": "FeatureCollection", "features": features[start : start + size], "links": []}
        if start + size < len(features):
            following = {k: v for k, v in params.items() if k != "token"} | {"token": str(start + size)}
            link = {"rel": "next", "type": "application/geo+json", "method": method}
            if method == "POST":
                link |= {"href": f"{self.url}/api/search", "body": following}
            else:
                link["href"] = f"{self.url}/api/search?{urlencode(following)}"
            page["links"].append(link)
        return page

    def _matching(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        collections = params.get("collections") or []
        if isinstance(collections, str):
            collections = collections.split(",")
        bbox = params.get("bbox")
        if isinstance(bbox, str):
            bbox = [float(v) for v in bbox.split(",")]
        features = []
        for item in self.items:
            if collections and item.get("collection") not in collections:
                continue
            if bbox and item.get("bbox"):
                w, s, e, n = item["bbox"]
                if w > bbox[2] or e < bbox[0] or s > bbox[3] or n < bbox[1]:
                    continue
            if not _matches(item, params.get("query")):
                continue
            features.append(item)
        return features


_QUERY_OPS = {"lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge, "eq": operator.eq}


def _matches(item: dict[str, Any], query: Any) -> bool:
    """The STAC API query extension: every {property: {op: value}} holds; an item without the property fails."""
    if isinstance(query, str):
        query = json.loads(query)
    props = item.get("properties") or {}
    for prop, ops in (query or {}).items():
        if prop not in props or not all(_QUERY_OPS[op](props[prop], v) for op, v in ops.items()):
            return False
    return True
