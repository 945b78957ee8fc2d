"""A fake Google Cloud Storage on loopback, for remote-workdir tests.

It speaks the part of the GCS JSON API that nnd's gs:// path uses: gcsfs (through
``etils.epath`` with ``EPATH_USE_TF=0``) for metadata, pictures, metrics and events,
and TensorStore's ``gcs`` driver (orbax's array data) through
``TENSORSTORE_GCS_HTTP_URL``. Objects live in a dict; :func:`serve` sets the
environment so both clients talk to it without credentials.

Supported: object get (metadata or media, with ranges), list (prefix, delimiter,
paging), insert (media, multipart, resumable), delete (also batched), rewrite,
generation preconditions, and bucket get. Anything else answers 501, so a client
that needs more fails loudly.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import http.server
import json
import os
import re
import sys
import threading
import urllib.parse
import uuid

__all__ = ["FakeGCS", "serve"]

# gcsfs reads this when first imported: without it, it asks a gRPC storage-control
# service for each bucket's type (60 s timeouts against a fake).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

_TIME = "2024-01-01T00:00:00.000Z"


class FakeGCS:
    """The store: ``objects[(bucket, name)] = (bytes, generation)``."""

    def __init__(self, buckets=("bucket",)):
        self.buckets = set(buckets)
        self.objects: dict[tuple[str, str], tuple[bytes, int]] = {}
        self.uploads: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.generation = 1000
        self.unsupported: list[str] = []
        self.fail_writes = None  # an HTTP status returned to every write when set

    def names(self, bucket="bucket", prefix=""):
        return sorted(n for b, n in self.objects if b == bucket and n.startswith(prefix))

    def read(self, bucket, name) -> bytes:
        return self.objects[(bucket, name)][0]

    def meta(self, bucket, name):
        data, generation = self.objects[(bucket, name)]
        return {"kind": "storage#object", "bucket": bucket, "name": name,
                "id": f"{bucket}/{name}/{generation}", "size": str(len(data)),
                "generation": str(generation), "metageneration": "1",
                "contentType": "application/octet-stream", "timeCreated": _TIME,
                "updated": _TIME, "storageClass": "STANDARD", "md5Hash": "", "crc32c": ""}

    def put(self, bucket, name, data: bytes):
        with self.lock:
            self.generation += 1
            self.objects[(bucket, name)] = (bytes(data), self.generation)
            return self.meta(bucket, name)


def _handler(store: FakeGCS):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        # -- replies ---------------------------------------------------------
        def _reply(self, status, body=b"", headers=None, content_type="application/json"):
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if body or status not in (204, 304):
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status, message):
            self._reply(status, {"error": {"code": status, "message": message,
                                           "errors": [{"message": message}]}})

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _route(self):
            url = urllib.parse.urlsplit(self.path)
            query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
            return url.path, query

        # -- preconditions ---------------------------------------------------
        def _precondition(self, bucket, name, query, *, write):
            current = store.objects.get((bucket, name))
            generation = current[1] if current else 0
            match = query.get("ifGenerationMatch")
            if match is not None and int(match) != generation:
                return 412
            not_match = query.get("ifGenerationNotMatch")
            if not_match is not None and int(not_match) == generation:
                return 412 if write else 304
            return None

        def _media(self, bucket, name, query):
            if (bucket, name) not in store.objects:
                return self._error(404, f"No such object: {bucket}/{name}")
            failed = self._precondition(bucket, name, query, write=False)
            if failed:
                return self._reply(failed, b"" if failed == 304 else b"{}")
            data, generation = store.objects[(bucket, name)]
            headers = {"x-goog-generation": str(generation), "x-goog-metageneration": "1",
                       "x-goog-stored-content-length": str(len(data)),
                       "ETag": f'"{generation}"'}
            status = 200
            span = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "") or "")
            if span and (span.group(1) or span.group(2)):
                if span.group(1):
                    lo = int(span.group(1))
                    hi = int(span.group(2)) if span.group(2) else len(data) - 1
                else:  # suffix range: the last N bytes
                    lo, hi = max(len(data) - int(span.group(2)), 0), len(data) - 1
                hi = min(hi, len(data) - 1)
                if lo > hi and len(data):
                    return self._reply(416, b"{}", headers)
                headers["Content-Range"] = f"bytes {lo}-{hi}/{len(data)}"
                data, status = data[lo:hi + 1], 206
            self._reply(status, data, headers, "application/octet-stream")

        # -- verbs -----------------------------------------------------------
        def do_GET(self):  # noqa: N802
            path, query = self._route()
            m = re.fullmatch(r"/(?:download/)?storage/v1/b/([^/]+)/o/(.+)", path)
            if m:
                bucket, name = m.group(1), urllib.parse.unquote(m.group(2))
                if query.get("alt") == "media":
                    return self._media(bucket, name, query)
                if (bucket, name) not in store.objects:
                    return self._error(404, f"No such object: {bucket}/{name}")
                return self._reply(200, store.meta(bucket, name))
            m = re.fullmatch(r"/storage/v1/b/([^/]+)/o/?", path)
            if m:
                return self._list(m.group(1), query)
            m = re.fullmatch(r"/storage/v1/b/([^/]+)/?", path)
            if m:
                if m.group(1) not in store.buckets:
                    return self._error(404, "bucket not found")
                return self._reply(200, {"kind": "storage#bucket", "name": m.group(1),
                                         "id": m.group(1), "timeCreated": _TIME,
                                         "updated": _TIME})
            self._unsupported()

        do_HEAD = do_GET  # noqa: N815

        def _list(self, bucket, query):
            if bucket not in store.buckets:
                return self._error(404, "bucket not found")
            prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
            start = query.get("startOffset", "")
            items, prefixes = [], set()
            for name in store.names(bucket, prefix):
                if name < start:
                    continue
                rest = name[len(prefix):]
                if delimiter and delimiter in rest:
                    prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
                else:
                    items.append(store.meta(bucket, name))
            entries = [("o", i["name"], i) for i in items] + [("p", p, p) for p in prefixes]
            entries.sort(key=lambda e: e[1])
            offset = int(query.get("pageToken") or 0)
            size = int(query.get("maxResults") or 1000)
            page = entries[offset:offset + size]
            out = {"kind": "storage#objects",
                   "items": [e[2] for e in page if e[0] == "o"],
                   "prefixes": [e[2] for e in page if e[0] == "p"]}
            if offset + size < len(entries):
                out["nextPageToken"] = str(offset + size)
            self._reply(200, out)

        def do_POST(self):  # noqa: N802
            path, query = self._route()
            body = self._body()
            m = re.fullmatch(r"/upload/storage/v1/b/([^/]+)/o", path)
            if m:
                return self._upload(m.group(1), query, body)
            m = re.fullmatch(r"/storage/v1/b/([^/]+)/o/(.+)/(?:rewriteTo|copyTo)/b/([^/]+)/o/(.+)", path)
            if m:
                src = (m.group(1), urllib.parse.unquote(m.group(2)))
                dst = (m.group(3), urllib.parse.unquote(m.group(4)))
                if src not in store.objects:
                    return self._error(404, "No such object")
                meta = store.put(*dst, store.objects[src][0])
                if "rewriteTo" in path:
                    size = meta["size"]
                    return self._reply(200, {"kind": "storage#rewriteResponse", "done": True,
                                             "totalBytesRewritten": size, "objectSize": size,
                                             "resource": meta})
                return self._reply(200, meta)
            if path.rstrip("/") == "/batch/storage/v1":
                return self._batch(body)
            self._unsupported()

        def _refuse_write(self):
            if store.fail_writes is not None:
                self._error(store.fail_writes, "write refused (fake GCS set to fail writes)")
                return True
            return False

        def _upload(self, bucket, query, body):
            if "upload_id" in query:  # gcsfs sends the chunks of a resumable upload by POST
                return self._chunk(query, body)
            if bucket not in store.buckets:
                return self._error(404, f"bucket {bucket} not found")
            kind = query.get("uploadType", "media")
            if kind == "resumable":
                meta = json.loads(body or b"{}")
                name = query.get("name") or meta.get("name")
                upload_id = uuid.uuid4().hex
                store.uploads[upload_id] = {"bucket": bucket, "name": name, "data": bytearray(),
                                            "query": query}
                host = self.headers.get("Host")
                return self._reply(200, b"", {
                    "Location": f"http://{host}/upload/storage/v1/b/{bucket}/o?"
                                f"uploadType=resumable&upload_id={upload_id}"})
            if self._refuse_write():
                return
            if kind == "multipart":
                parser = email.parser.BytesParser(policy=email.policy.HTTP)
                message = parser.parsebytes(
                    b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
                parts = list(message.iter_parts())
                meta = json.loads(parts[0].get_payload(decode=True))
                name, data = meta["name"], parts[1].get_payload(decode=True)
            else:
                name, data = query["name"], body
            failed = self._precondition(bucket, name, query, write=True)
            if failed:
                return self._error(failed, "precondition failed")
            self._reply(200, store.put(bucket, name, data))

        def do_PUT(self):  # noqa: N802
            path, query = self._route()
            self._chunk(query, self._body())

        def _chunk(self, query, body):
            upload = store.uploads.get(query.get("upload_id", ""))
            if upload is None:
                return self._unsupported()
            upload["data"] += body
            total = re.search(r"/(\d+|\*)$", self.headers.get("Content-Range", "") or "")
            if total and total.group(1) != "*" and int(total.group(1)) == len(upload["data"]):
                if self._refuse_write():
                    return
                del store.uploads[query["upload_id"]]
                return self._reply(200, store.put(upload["bucket"], upload["name"], upload["data"]))
            if not total and not self.headers.get("Content-Range"):  # a single PUT of everything
                del store.uploads[query["upload_id"]]
                return self._reply(200, store.put(upload["bucket"], upload["name"], upload["data"]))
            headers = {"Range": f"bytes=0-{len(upload['data']) - 1}"} if upload["data"] else {}
            self._reply(308, b"", headers)

        def do_DELETE(self):  # noqa: N802
            path, query = self._route()
            m = re.fullmatch(r"/storage/v1/b/([^/]+)/o/(.+)", path)
            if not m:
                return self._unsupported()
            status = self._delete(m.group(1), urllib.parse.unquote(m.group(2)), query)
            self._reply(status, b"" if status == 204 else b"{}")

        def _delete(self, bucket, name, query) -> int:
            if (bucket, name) not in store.objects:
                return 404
            failed = self._precondition(bucket, name, query, write=True)
            if failed:
                return failed
            with store.lock:
                del store.objects[(bucket, name)]
            return 204

        def _batch(self, body):
            boundary = "batch_" + uuid.uuid4().hex
            out = []
            for request in re.findall(rb"(DELETE|GET) (\S+) HTTP/1\.1", body):
                url = urllib.parse.urlsplit(request[1].decode())
                query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
                m = re.fullmatch(r"/storage/v1/b/([^/]+)/o/(.+)", url.path)
                status = (self._delete(m.group(1), urllib.parse.unquote(m.group(2)), query)
                          if m and request[0] == b"DELETE" else 501)
                reason = {204: "No Content", 404: "Not Found"}.get(status, "Error")
                out.append(f"--{boundary}\r\nContent-Type: application/http\r\n\r\n"
                           f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n\r\n")
            payload = ("".join(out) + f"--{boundary}--\r\n").encode()
            self._reply(200, payload, content_type=f"multipart/mixed; boundary={boundary}")

        def _unsupported(self):
            store.unsupported.append(f"{self.command} {self.path}")
            self._error(501, f"fake GCS: unsupported {self.command} {self.path}")

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up early
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serve(buckets=("bucket",)):
    """Serves a :class:`FakeGCS` on 127.0.0.1 and points gcsfs, epath and TensorStore at it."""
    store = FakeGCS(buckets)
    server = _Server(("127.0.0.1", 0), _handler(store))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           "EPATH_USE_TF": "0",  # epath through gcsfs (tf.io.gfile cannot be pointed here)
           "fsspec".upper() + "_GCS_TOKEN": "anon",  # fsspec's config variable: gcsfs token
           "NO_GCE_CHECK": "true",
           "GCE_METADATA_HOST": "127.0.0.1:1", "GCE_METADATA_ROOT": "127.0.0.1:1",
           "GOOGLE_CLOUD_PROJECT": "fake"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _forget_tf_choice()
    try:
        yield store, url
    finally:
        server.shutdown()
        server.server_close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _forget_tf_choice()


def _forget_tf_choice():
    """epath decides once per process whether gs:// goes through TensorFlow (a cached
    check of EPATH_USE_TF); make it read the variable again."""
    from etils.epath import gpath

    getattr(gpath._is_tf_installed, "cache_clear", lambda: None)()
