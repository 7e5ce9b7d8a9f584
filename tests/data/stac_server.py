"""A local STAC API and COG server for tests: recorded JSON from ``tests/data/stac`` and files that honour Range.

:class:`StacServer` runs a threaded ``http.server`` on 127.0.0.1 (a free port) in a background thread:

- ``GET /`` answers the recorded landing page; ``POST /search`` (and ``GET /search``) filter the recorded items of
  the asked collections by ``ids``, ``bbox`` (intersection of bounding boxes), ``datetime`` and the ``query``
  extension's ``lt``/``lte``/``gt``/``gte`` on properties, as a STAC API does;
- ``GET /files/<name>`` serves a file of ``files_dir`` with ``Range`` support (206 and ``Content-Range``), counting
  the bytes it sends per file (``bytes_sent``);
- ``drop`` names files whose ranged reads past the first 64 KiB are cut off after at most 100 bytes of the body (a
  server dropping the connection mid-read, every time: GDAL resumes a range that was half sent, so a server
  that fails once is not an error); ``down`` makes every request fail with a closed connection.

``{SERVER}`` in the recorded JSON becomes the server's base URL.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

JSON_DIR = Path(__file__).resolve().parent / "stac"


class StacServer:
    def __init__(self, files_dir, json_dir=JSON_DIR):
        self.files_dir = Path(files_dir)
        self.json_dir = Path(json_dir)
        self.bytes_sent: Counter = Counter()
        self.requests: list[str] = []
        self.drop: set[str] = set()
        self.down = False
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    def recorded(self, name: str):
        text = (self.json_dir / name).read_text(encoding="utf-8").replace("{SERVER}", self.url)
        return json.loads(text)

    def search(self, params: dict) -> dict:
        collections = params.get("collections") or [p.stem for p in self.json_dir.glob("*.json")
                                                    if p.name != "landing.json"]
        items = [it for c in collections if (self.json_dir / f"{c}.json").exists()
                 for it in self.recorded(f"{c}.json")]
        items = [it for it in items if _matches(it, params)]
        limit = int(params.get("limit") or 100)
        return {"type": "FeatureCollection", "features": items[:limit], "links": [],
                "numberReturned": len(items[:limit]), "numberMatched": len(items)}


def _matches(item, params) -> bool:
    if params.get("ids") and item["id"] not in params["ids"]:
        return False
    bbox = params.get("bbox")
    if bbox:
        w, s, e, n = (float(v) for v in bbox)
        iw, is_, ie, in_ = item["bbox"]
        if iw > e or ie < w or is_ > n or in_ < s:
            return False
    if params.get("datetime"):
        start, _, end = params["datetime"].partition("/")
        end = end or start
        p = item["properties"]
        i0 = _time(p.get("datetime") or p.get("start_datetime"))
        i1 = _time(p.get("datetime") or p.get("end_datetime"))
        if (start not in ("", "..") and i1 < _time(start)) or (end not in ("", "..") and i0 > _time(end, True)):
            return False
    for key, ops in (params.get("query") or {}).items():
        value = item["properties"].get(key)
        for op, limit in ops.items():
            if value is None or not {"lt": value < limit, "lte": value <= limit, "gt": value > limit,
                                     "gte": value >= limit, "eq": value == limit}.get(op, True):
                return False
    return True


def _time(text: str, end=False) -> dt.datetime:
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        text += "T23:59:59+00:00" if end else "T00:00:00+00:00"
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _handler(server: StacServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _json(self, data, code=200):
            body = json.dumps(data).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":  # a body after a HEAD answer would corrupt the next kept-alive response
                self.wfile.write(body)

        def _refuse(self) -> bool:
            server.requests.append(f"{self.command} {self.path} {self.headers.get('Range', '')}")
            if server.down:
                self.close_connection = True
                self.connection.close()
                return True
            return False

        def do_POST(self):
            if self._refuse():
                return
            length = int(self.headers.get("Content-Length") or 0)
            params = json.loads(self.rfile.read(length) or b"{}")
            if urlparse(self.path).path.rstrip("/") == "/search":
                return self._json(server.search(params))
            self._json({"code": "NotFound"}, 404)

        def do_HEAD(self):
            self.do_GET(head=True)

        def do_GET(self, head=False):
            if self._refuse():
                return
            url = urlparse(self.path)
            if url.path in ("", "/"):
                return self._json(server.recorded("landing.json"))
            if url.path.rstrip("/") == "/search":
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                params = {"collections": q.get("collections", "").split(",") if q.get("collections") else None,
                          "ids": q["ids"].split(",") if q.get("ids") else None,
                          "bbox": q["bbox"].split(",") if q.get("bbox") else None,
                          "datetime": q.get("datetime"), "limit": q.get("limit"),
                          "query": json.loads(q["query"]) if q.get("query") else None}
                return self._json(server.search(params))
            if url.path.startswith("/files/"):
                return self._file(url.path[len("/files/"):], head)
            self._json({"code": "NotFound"}, 404)

        def _file(self, name, head):
            path = server.files_dir / name
            if "/" in name or not path.is_file():
                return self._json({"code": "NotFound"}, 404)
            data = path.read_bytes()
            start, end = 0, len(data) - 1
            ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if ranged:
                start = int(ranged.group(1))
                end = min(int(ranged.group(2)) if ranged.group(2) else end, len(data) - 1)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:end + 1]
            self.send_header("Content-Type", "image/tiff")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if head:
                return
            if name in server.drop and start >= 65536:
                self.wfile.write(body[: min(len(body) // 2, 100)])  # GDAL resumes a half-sent range: send ~nothing
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(body)
            server.bytes_sent[name] += len(body)

    return Handler
