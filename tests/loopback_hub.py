"""A Hugging Face Hub API stand-in on 127.0.0.1 for the tests, so that the real `huggingface_hub` client code (and
transformers' and diffusers' loaders on top of it) runs end to end with `HF_ENDPOINT` pointing here.

It serves what `create_repo`, `upload_folder` / `create_commit`, `model_info` / `repo_info`, `hf_hub_download` and
`snapshot_download` of huggingface_hub 2.4 request:

    POST /api/repos/create                          {"name", "organization", "visibility", "type"}
    POST /api/validate-yaml                         a model card's front matter must parse, model-index included
    POST /api/models/{repo}/preupload/{revision}    every file "regular" (inline in the commit); the LFS / Xet
                                                    storage protocols are not served
    POST /api/models/{repo}/commit/{revision}       ndjson: header, file (base64), deletedFile, deletedFolder
    GET  /api/models/{repo}[/revision/{revision}]   id, sha, private, siblings
    HEAD|GET /{repo}/resolve/{revision}/{path}      X-Repo-Commit, ETag, Content-Length; the bytes

A repository is private when created so; private repositories answer 404 without an `Authorization` header, as the
Hub does. The server binds 127.0.0.1 only, accepts at most `max_requests` requests and bodies of at most
`max_body_bytes`, and shuts itself down after `lifetime_s` seconds, or when the `with` block ends.
"""

import base64
import hashlib
import json
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results


class LoopbackHub:
    """`with LoopbackHub() as hub:` serves at `hub.endpoint`; `hub.repos[repo_id]` holds the committed files."""

    def __init__(self, max_requests: int = 2000, max_body_bytes: int = 64 << 20, lifetime_s: float = 600.0):
        self.max_requests, self.max_body_bytes, self.lifetime_s = max_requests, max_body_bytes, lifetime_s
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every request served
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._timer = threading.Timer(lifetime_s, self.close)
        self._timer.daemon = True

    def __enter__(self) -> "LoopbackHub":
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stops serving (idempotent) and releases the port."""
        self._timer.cancel()
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()

    # -- repository state --------------------------------------------------------------------------------------
    def create(self, repo_id: str, private: bool) -> bool:
        with self.lock:
            if repo_id in self.repos:
                return False
            self.repos[repo_id] = {"private": private, "files": {}, "sha": hashlib.sha1(repo_id.encode()).hexdigest()}
            return True

    def commit(self, repo_id: str, lines: list[dict]) -> str:
        with self.lock:
            repo = self.repos[repo_id]
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    repo["files"][value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    repo["files"].pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    repo["files"] = {p: c for p, c in repo["files"].items() if not p.startswith(prefix)}
                elif key == "header":
                    repo.setdefault("commit_messages", []).append(value.get("summary", ""))
                else:
                    raise ValueError(f"unsupported commit operation {key!r}")
            digest = hashlib.sha1(repo["sha"].encode())
            for path in sorted(repo["files"]):
                digest.update(path.encode() + hashlib.sha256(repo["files"][path]).digest())
            repo["sha"] = digest.hexdigest()
            return repo["sha"]


def _make_handler(hub: LoopbackHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args) -> None:  # the tests read `hub.requests` instead
            return

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
            hub.requests.append((self.command, self.path, status))
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, status: int, payload: dict) -> None:
            self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

        def _error(self, status: int, message: str, head: bool = False) -> None:
            self._send(status, json.dumps({"error": message}).encode(), {"X-Error-Message": message}, head=head)

        def _body(self) -> bytes | None:
            length = int(self.headers.get("Content-Length", "0"))
            if length > hub.max_body_bytes:
                self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {hub.max_body_bytes} bytes")
                return None
            return self.rfile.read(length)

        def _admit(self) -> bool:
            if len(hub.requests) >= hub.max_requests:
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"loopback hub served its {hub.max_requests} requests")
                threading.Thread(target=hub.close, daemon=True).start()
                return False
            return True

        def _repo(self, repo_id: str, head: bool = False) -> dict | None:
            repo = hub.repos.get(repo_id)
            if repo is None or (repo["private"] and not self.headers.get("Authorization")):
                self._send(
                    HTTPStatus.NOT_FOUND,
                    b'{"error": "Repository not found"}',
                    {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
                    head=head,
                )
                return None
            return repo

        def do_POST(self) -> None:
            if not self._admit():
                return
            body = self._body()
            if body is None:
                return
            path = unquote(urlsplit(self.path).path)
            if path == "/api/repos/create":
                request = json.loads(body)
                repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else None
                if repo_id is None or request.get("type", "model") != "model":
                    self._error(HTTPStatus.BAD_REQUEST, "only namespaced model repositories are served")
                elif hub.create(repo_id, request.get("visibility") == "private"):
                    self._json(HTTPStatus.OK, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
                else:
                    self._error(HTTPStatus.CONFLICT, "You already created this model repo")
                return
            if path == "/api/validate-yaml":
                try:
                    metadata = ModelCard(json.loads(body)["content"]).data.to_dict()
                    if "model-index" in metadata:
                        model_index_to_eval_results(metadata["model-index"])
                except (ValueError, KeyError, TypeError) as error:
                    self._json(HTTPStatus.BAD_REQUEST, {"errors": [{"message": str(error)}], "warnings": []})
                else:
                    self._json(HTTPStatus.OK, {"errors": [], "warnings": []})
                return
            parts = path.split("/")  # ["", "api", "models", ns, name, action, revision]
            if len(parts) == 7 and parts[:3] == ["", "api", "models"] and parts[5] in ("preupload", "commit"):
                repo = self._repo(f"{parts[3]}/{parts[4]}")
                if repo is None:
                    return
                if parts[5] == "preupload":
                    files = json.loads(body)["files"]
                    modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    self._json(HTTPStatus.OK, {"files": modes})
                else:
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    sha = hub.commit(f"{parts[3]}/{parts[4]}", lines)
                    url = f"{hub.endpoint}/{parts[3]}/{parts[4]}/commit/{sha}"
                    self._json(HTTPStatus.OK, {"commitUrl": url, "commitOid": sha, "pullRequestUrl": None})
                return
            self._error(HTTPStatus.NOT_FOUND, f"not served: POST {path}")

        def _get(self, head: bool) -> None:
            if not self._admit():
                return
            path = unquote(urlsplit(self.path).path)
            parts = path.split("/")
            if len(parts) >= 5 and parts[:3] == ["", "api", "models"]:
                repo_id = f"{parts[3]}/{parts[4]}"
                repo = self._repo(repo_id, head)
                if repo is None:
                    return
                if len(parts) == 5 or (len(parts) == 7 and parts[5] == "revision"):
                    siblings = [{"rfilename": name} for name in sorted(repo["files"])]
                    info = {"id": repo_id, "modelId": repo_id, "sha": repo["sha"], "private": repo["private"]}
                    modified = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
                    self._json(HTTPStatus.OK, {**info, "siblings": siblings, "lastModified": modified})
                elif len(parts) >= 7 and parts[5] == "tree":  # recursive listing, one page
                    prefix = "/".join(parts[7:])
                    entries = [
                        {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                        for name, data in sorted(repo["files"].items())
                        if not prefix or name.startswith(prefix.rstrip("/") + "/")
                    ]
                    self._send(HTTPStatus.OK, json.dumps(entries).encode(), {"Content-Type": "application/json"})
                else:
                    self._error(HTTPStatus.NOT_FOUND, f"not served: {self.command} {path}", head=head)
                return
            if len(parts) >= 6 and parts[3] == "resolve":
                repo = self._repo(f"{parts[1]}/{parts[2]}", head)
                if repo is None:
                    return
                revision, filename = parts[4], "/".join(parts[5:])
                if revision not in ("main", repo["sha"]) or filename not in repo["files"]:
                    message = f"{filename} not found at {revision}"
                    self._send(
                        HTTPStatus.NOT_FOUND, b"", {"X-Error-Code": "EntryNotFound", "X-Error-Message": message}, head
                    )
                    return
                content = repo["files"][filename]
                etag = f'"{hashlib.sha256(content).hexdigest()}"'
                headers = {"X-Repo-Commit": repo["sha"], "ETag": etag, "Content-Type": "application/octet-stream"}
                self._send(HTTPStatus.OK, content, headers, head=head)
                return
            self._error(HTTPStatus.NOT_FOUND, f"not served: {self.command} {path}", head=head)

        def do_GET(self) -> None:
            self._get(head=False)

        def do_HEAD(self) -> None:
            self._get(head=True)

    return Handler
