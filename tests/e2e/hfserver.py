"""A local stand-in for Hugging Face's file hosting, for `inferencecenter
pull` tests: 127.0.0.1 only, started and stopped by the test.

  GET /OWNER/REPO/resolve/REV/FILE  302 to /lfs/<sha256> with X-Linked-Etag
                                    ("<sha256>") and X-Linked-Size, as HF does
  GET /lfs/<sha256>                 the bytes, with Range (206) and ETag
Files are registered with add(path_in_repo, data, ...). Knobs per file:
gated (401 without `Authorization: Bearer good-token`), published_sha
(what X-Linked-Etag says), rate (bytes per second), stall_after (bytes
sent before the server goes silent). Every answer is recorded in .log.
"""
import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HFServer:
    def __init__(self):
        self.files = {}      # "OWNER/REPO/FILE" -> dict
        self.blobs = {}      # sha -> dict
        self.log = []        # (method, path, range header, status, body bytes sent)
        self.stop_event = threading.Event()
        hf = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                hf._get(self)

            def do_HEAD(self):
                hf._get(self, head=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def add(self, repo_path, data, gated=False, published_sha=None, rate=None,
            stall_after=None):
        sha = hashlib.sha256(data).hexdigest()
        f = {"data": data, "sha": sha, "gated": gated,
             "published": published_sha or sha, "rate": rate, "stall_after": stall_after}
        self.files[repo_path] = f
        self.blobs[sha] = f
        return sha

    def close(self):
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _send(self, h, status, headers=(), body=b"", head=False, f=None, start=0):
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        sent = 0
        if not head and body:
            rate = f and f["rate"]
            stall = f and f["stall_after"]
            chunk = 16384
            try:
                for i in range(0, len(body), chunk):
                    if stall is not None and start + sent >= stall:
                        self.stop_event.wait(120)   # silent until the test ends
                        break
                    piece = body[i:i + chunk]
                    h.wfile.write(piece)
                    sent += len(piece)
                    if rate:
                        time.sleep(len(piece) / rate)
            except (BrokenPipeError, ConnectionResetError):
                pass
        self.log.append((h.command, h.path, h.headers.get("Range"), status, sent))

    def _get(self, h, head=False):
        path = h.path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":
            key = "/".join(parts[:2] + parts[4:])
            f = self.files.get(key)
            if not f:
                return self._send(h, 404, body=b"Entry not found", head=head)
            if f["gated"] and h.headers.get("Authorization") != "Bearer good-token":
                return self._send(h, 401, body=b"Access to model is restricted", head=head)
            return self._send(h, 302, [("Location", f"/lfs/{f['sha']}"),
                                       ("X-Linked-Etag", f"\"{f['published']}\""),
                                       ("X-Linked-Size", str(len(f["data"])))], head=head)
        if len(parts) == 2 and parts[0] == "lfs" and parts[1] in self.blobs:
            f = self.blobs[parts[1]]
            data = f["data"]
            rng = h.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-", 1)[0])
                if start >= len(data):
                    return self._send(h, 416, [("Content-Range", f"bytes */{len(data)}")],
                                      head=head)
                return self._send(h, 206, [("Content-Range",
                                            f"bytes {start}-{len(data) - 1}/{len(data)}"),
                                           ("ETag", f"\"{f['sha']}\"")],
                                  body=data[start:], head=head, f=f, start=start)
            return self._send(h, 200, [("ETag", f"\"{f['sha']}\"")], body=data, head=head, f=f)
        return self._send(h, 404, body=b"not found", head=head)
