"""A local server speaking the Hugging Face hub's HTTP protocol, as huggingface_hub uses it to
download a snapshot: the repository's revision (``/api/models/<repo>/revision/<rev>``), its file
tree (``/api/models/<repo>/tree/<rev>``), and each file's metadata and bytes
(``HEAD``/``GET /<repo>/resolve/<rev>/<path>``, with ``X-Repo-Commit``, ``ETag`` and ranges for
resumed downloads). Plain HTTP files (no Xet), as a mirror serves them.

Tests steer it: ``broken`` answers 500 to every file download (an outage), ``hold`` stops the
weights half-way until it is set (to watch progress)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from aiohttp import web

COMMIT = "c0ffee" + "0" * 34


class FakeHub:
    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = repos
        self.broken = False
        self.hold: asyncio.Event | None = None
        #: Paths of the files whose bytes were asked for, in order.
        self.downloads: list[str] = []
        self.app = web.Application()
        self.app.router.add_get("/api/models/{org}/{name}/revision/{rev}", self.revision)
        self.app.router.add_get("/api/models/{org}/{name}/tree/{rev}", self.tree)
        self.app.router.add_route("*", "/{org}/{name}/resolve/{rev}/{path:.+}", self.resolve)

    def _files(self, request: web.Request) -> dict[str, Path]:
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        folder = self.repos.get(repo)
        if folder is None:
            raise web.HTTPNotFound(headers={"X-Error-Code": "RepoNotFound"}, text="Repository not found")
        return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}

    async def revision(self, request: web.Request) -> web.Response:
        files = self._files(request)
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        return web.json_response({"id": repo, "modelId": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]})

    async def tree(self, request: web.Request) -> web.Response:
        entries = [
            {"type": "file", "path": name, "size": path.stat().st_size, "oid": hashlib.sha1(path.read_bytes()).hexdigest()}
            for name, path in self._files(request).items()
        ]
        return web.json_response(entries)

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        files = self._files(request)
        path = files.get(request.match_info["path"])
        if path is None:
            raise web.HTTPNotFound(headers={"X-Error-Code": "EntryNotFound"}, text="Entry not found")
        body = path.read_bytes()
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(body).hexdigest()}"', "Accept-Ranges": "bytes"}
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(body))})
        self.downloads.append(request.match_info["path"])
        if self.broken:
            raise web.HTTPInternalServerError(text="the hub is down")
        start = 0
        if request.http_range.start is not None:
            start = request.http_range.start
        response = web.StreamResponse(status=206 if start else 200, headers=headers)
        response.content_length = len(body) - start
        await response.prepare(request)
        half = len(body) // 2
        if self.hold is not None and path.name == "model.safetensors" and start < half:
            await response.write(body[start:half])
            await self.hold.wait()
            start = half
        await response.write(body[start:])
        await response.write_eof()
        return response
