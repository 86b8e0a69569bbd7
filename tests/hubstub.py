"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, for tests/test_hub.py (no network here).

It serves the endpoints huggingface_hub 2.x calls for `create_repo`, `create_branch`, `create_commit` and
`snapshot_download`, read off the library's source (hf_api.py, _commit_api.py, file_download.py,
_snapshot_download.py, utils/_http.py), with the answers and headers the library checks:

    POST /api/repos/create                           {name, organization, visibility} -> {url}; 409 if it exists
    POST /api/validate-yaml                          the model card's front matter -> {errors: [], warnings: []}
    POST /api/models/{repo}/branch/{branch}          a branch from main (or startingPoint); 409 if it exists
    POST /api/models/{repo}/preupload/{rev}          {files: [{path, sample, size}]} -> uploadMode "regular" for
                                                     every file: they then come inline, base64, in the commit
    POST /api/models/{repo}/commit/{rev}             NDJSON: a header line, then {"key": "file", "value":
                                                     {path, content, encoding: base64}} (deletedFile too; an
                                                     lfsFile is refused) -> {commitOid, commitUrl}
    GET  /api/models/{repo}[/revision/{rev}]         {id, sha, private, siblings}
    GET  /api/models/{repo}/tree/{rev}               the recursive listing: [{type, path, oid, size}]
    HEAD /{repo}/resolve/{rev}/{path}                X-Repo-Commit, ETag (the git blob id), Content-Length
    GET  /{repo}/resolve/{rev}/{path}                the bytes, with the same headers

Errors carry the headers huggingface_hub turns into its exceptions: X-Error-Code RepoNotFound (an unknown or
unreadable repository), RevisionNotFound, EntryNotFound; a write without the stand-in's token gets 401 with
X-Error-Message "Invalid credentials in Authorization header". Files are stored as git blobs (no LFS, no
Xet): the real Hub would take the weights through LFS/Xet, which the stand-in does not speak, so it answers
"regular" for every file and keeps the test files small. Every request is logged in `requests`.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def blob_id(data: bytes) -> str:
    """git's id of a blob: what the Hub sends as the ETag of a file not stored in LFS."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Refusal(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.headers, self.body = status, code, headers or {}, body or {}


class HubStub:
    """The stand-in: `with HubStub() as hub:` serves on `hub.url` (HF_ENDPOINT) until the block ends."""

    def __init__(self, token: str = "hf_stand_in_token"):
        self.token = token
        self.repos: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.cards: list[str] = []
        self._lock = threading.Lock()
        self._count = 0
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                stub._serve(self, "GET")

            def do_HEAD(self):
                stub._serve(self, "HEAD")

            def do_POST(self):
                stub._serve(self, "POST")

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> HubStub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ the store

    def seed(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> str:
        """A repository holding `files` on main, made without the API (a repository someone else pushed)."""
        with self._lock:
            self._create(repo_id, private)
            return self._commit(repo_id, "main", files, [], "seeded")

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo["commits"][self._resolve(repo_id, revision)])

    def _create(self, repo_id: str, private: bool) -> None:
        self.repos[repo_id] = {"private": private, "branches": {}, "commits": {}}
        self._commit(repo_id, "main", {".gitattributes": GITATTRIBUTES}, [], "initial commit")

    def _commit(self, repo_id: str, branch: str, added: dict[str, bytes], deleted: list[str], summary: str) -> str:
        repo = self.repos[repo_id]
        parent = repo["branches"].get(branch)
        tree = dict(repo["commits"][parent]) if parent else {}
        tree.update(added)
        for path in deleted:
            tree.pop(path, None)
        self._count += 1
        sha = hashlib.sha1(f"{repo_id}\n{parent}\n{summary}\n{self._count}".encode()).hexdigest()
        repo["commits"][sha] = tree
        repo["branches"][branch] = sha
        return sha

    def _resolve(self, repo_id: str, revision: str) -> str:
        repo = self.repos[repo_id]
        if revision in repo["branches"]:
            return repo["branches"][revision]
        if revision in repo["commits"]:
            return revision
        raise _Refusal(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    # ------------------------------------------------------------------ HTTP

    def _serve(self, h: http.server.BaseHTTPRequestHandler, method: str) -> None:
        path = urlsplit(h.path).path
        with self._lock:
            self.requests.append((method, path))
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        try:
            with self._lock:
                status, payload, headers = self._route(h, method, path, body)
        except _Refusal as exc:
            status, headers = exc.status, dict(exc.headers)
            payload = json.dumps({"error": str(exc), **exc.body}).encode()
            if exc.code:
                headers["X-Error-Code"] = exc.code
            headers["X-Error-Message"] = str(exc)
            headers["Content-Type"] = "application/json"
        h.send_response(status)
        headers.setdefault("Content-Length", str(len(payload)))
        for key, value in headers.items():
            h.send_header(key, value)
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(payload)

    def _json(self, data: Any, status: int = 200) -> tuple[int, bytes, dict]:
        return status, json.dumps(data).encode(), {"Content-Type": "application/json"}

    def _authorized(self, h) -> bool:
        return h.headers.get("authorization") == f"Bearer {self.token}"

    def _writer(self, h) -> None:
        if not self._authorized(h):
            raise _Refusal(401, "Invalid credentials in Authorization header")

    def _readable(self, h, repo_id: str) -> dict:
        repo = self.repos.get(repo_id)
        if repo is None or (repo["private"] and not self._authorized(h)):
            raise _Refusal(404, "Repository not found", "RepoNotFound")
        return repo

    def _route(self, h, method: str, path: str, body: bytes) -> tuple[int, bytes, dict]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if method == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo(h, json.loads(body))
        if method == "POST" and parts == ["api", "validate-yaml"]:
            self.cards.append(json.loads(body)["content"])
            return self._json({"errors": [], "warnings": []})
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
            repo = self._readable(h, repo_id)
            return self._api(h, method, repo_id, repo, rest, body)
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            repo_id = f"{parts[0]}/{parts[1]}"
            self._readable(h, repo_id)
            return self._file(repo_id, parts[3], "/".join(parts[4:]))
        raise _Refusal(404, f"the stand-in does not serve {method} {path}")

    def _create_repo(self, h, payload: dict) -> tuple[int, bytes, dict]:
        self._writer(h)
        if payload.get("type") not in (None, "model"):
            raise _Refusal(400, "the stand-in keeps model repositories only")
        repo_id = f"{payload['organization']}/{payload['name']}"
        if repo_id in self.repos:
            # the Hub names the existing repository (create_repo(exist_ok=True) reads its url)
            raise _Refusal(409, "You already created this model repo", body={"url": f"{self.url}/{repo_id}"})
        self._create(repo_id, payload.get("visibility") == "private")
        return self._json({"url": f"{self.url}/{repo_id}", "name": repo_id})

    def _api(self, h, method: str, repo_id: str, repo: dict, rest: list[str], body: bytes) -> tuple[int, bytes, dict]:
        if method == "GET" and (not rest or rest[0] == "revision"):
            sha = self._resolve(repo_id, rest[1] if rest else "main")
            siblings = [{"rfilename": p} for p in sorted(repo["commits"][sha])]
            return self._json({"id": repo_id, "sha": sha, "private": repo["private"], "siblings": siblings,
                               "library_name": "vaelab", "tags": []})
        if method == "GET" and rest[0] == "tree":
            tree = repo["commits"][self._resolve(repo_id, rest[1])]
            folders = sorted({"/".join(p.split("/")[:i]) for p in tree for i in range(1, p.count("/") + 1)})
            return self._json([{"type": "directory", "path": d, "oid": blob_id(d.encode()), "size": 0}
                               for d in folders] +
                              [{"type": "file", "path": p, "oid": blob_id(data), "size": len(data)}
                               for p, data in sorted(tree.items())])
        self._writer(h)
        if method == "POST" and rest[0] == "preupload":
            tree = repo["commits"][self._resolve(repo_id, rest[1])] if rest[1] in repo["branches"] else {}
            return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                          "oid": blob_id(tree[f["path"]]) if f["path"] in tree else None}
                                         for f in json.loads(body)["files"]]})
        if method == "POST" and rest[0] == "commit":
            return self._commit_request(repo_id, rest[1], body)
        if method == "POST" and rest[0] == "branch":
            if rest[1] in repo["branches"]:
                raise _Refusal(409, "Reference already exists")
            start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
            repo["branches"][rest[1]] = self._resolve(repo_id, start)
            return self._json({})
        raise _Refusal(404, f"the stand-in does not serve {method} /api/models/{repo_id}/{'/'.join(rest)}")

    def _commit_request(self, repo_id: str, branch: str, body: bytes) -> tuple[int, bytes, dict]:
        if branch not in self.repos[repo_id]["branches"]:
            raise _Refusal(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise _Refusal(400, "the commit's first line must be its header")
        added, deleted = {}, []
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file" and value.get("encoding") == "base64":
                added[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "deletedFile":
                deleted.append(value["path"])
            else:
                raise _Refusal(400, f"the stand-in does not take {line['key']} operations")
        sha = self._commit(repo_id, branch, added, deleted, lines[0]["value"]["summary"])
        return self._json({"commitOid": sha, "commitUrl": f"{self.url}/{repo_id}/commit/{sha}", "success": True})

    def _file(self, repo_id: str, revision: str, path: str) -> tuple[int, bytes, dict]:
        sha = self._resolve(repo_id, revision)
        tree = self.repos[repo_id]["commits"][sha]
        if path not in tree:
            raise _Refusal(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        data = tree[path]
        return 200, data, {"X-Repo-Commit": sha, "ETag": f'"{blob_id(data)}"', "Content-Length": str(len(data)),
                           "Content-Type": "application/octet-stream"}
