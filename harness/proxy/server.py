"""The caller's side of `harness proxy`: an HTTP server that passes every request to the upstream API as received
and its answer back unchanged, byte for byte and streaming as it streams, handing chat calls to the `Mirror`.

Paths: a request for `/v1/...` goes to the OpenAI upstream (`--upstream`, a base URL ending in /v1, as
OPENAI_BASE_URL) with the `/v1` replaced by it; `/v1/messages` goes to the Anthropic upstream (a root URL, as
ANTHROPIC_BASE_URL) with its path kept. `/shadow` is the status page and `/shadow/status` its JSON. The caller's
headers (its API key among them) are forwarded in memory and never stored or logged; only `Accept-Encoding` is
narrowed to the codings the proxy can read (gzip, deflate), so that it can read the answer it passes on.
"""

from __future__ import annotations

import html
import json
import socket
import time
import urllib.parse
from typing import Any

import aiohttp
import yarl
from aiohttp import web

from harness.errors import HarnessError
from harness.proxy.wire import api_of, is_anthropic
from harness.proxy.worker import MirrorProcess

# never forwarded either way (RFC 9110 7.6.1), plus what aiohttp sets itself
_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
                  "trailer", "transfer-encoding", "upgrade", "host", "content-length"})
_READABLE = ("gzip", "deflate", "identity")
MAX_REQUEST = 64 * 1024 * 1024  # the largest request body passed through at all


def check_upstream(url: str, what: str = "--upstream", timeout: float = 3.0) -> str:
    """`url` without a trailing slash when it is an http(s) URL whose host answers a TCP connection; else a
    HarnessError saying what is wrong with it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HarnessError(f"{what} {url!r}: not an http(s) URL; give one such as https://api.openai.com/v1")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise HarnessError(f"{what} {url!r}: the port is not a number") from None
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise HarnessError(f"{what} {url}: cannot connect to {parts.hostname}:{port} ({exc.strerror or exc}); "
                           "check the URL and that the server is up") from None
    return url.rstrip("/")


class ProxyServer:
    """`async with ProxyServer(mirror, upstreams, host, port) as proxy:` serves on `proxy.url` until the block ends.
    `upstreams`: {"openai": base URL ending in /v1, "anthropic": root URL}. `mirror` None: a plain pass-through."""

    def __init__(self, mirror: MirrorProcess | None, upstreams: dict[str, str], host: str = "127.0.0.1",
                 port: int = 8787) -> None:
        self.mirror = mirror
        self.upstreams = upstreams
        self.host = host
        self.port = port
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Where the proxy listens (its port once bound, also when asked for port 0)."""
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> ProxyServer:
        # no total timeout: a stream lasts as long as the upstream streams; no pool limit: the caller sets the pace
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            # only the caller's headers go upstream: none of the client's defaults (Accept-Encoding: gzip would
            # bring the caller a compressed body it never asked for)
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        app = web.Application(client_max_size=MAX_REQUEST)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self.__aexit__()
            raise HarnessError(f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); "
                               "choose another --port") from None
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _target(self, anthropic: bool, path: str, query: str) -> str:
        """The upstream URL of a request for `path` (as the caller encoded it) and `query`."""
        if anthropic:
            url = self.upstreams["anthropic"] + path
        else:
            url = self.upstreams["openai"] + (path[3:] if path.startswith("/v1/") or path == "/v1" else path)
        return f"{url}?{query}" if query else url

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = time.perf_counter()
        path = request.path
        if path == "/shadow" or path.startswith("/shadow/"):
            return self._status(path)
        body = await request.read()
        mirror = self.mirror
        counts = mirror.counts if mirror is not None else None
        if counts is not None:
            counts.requests += 1
        api = api_of(path) if request.method == "POST" else None
        ticket = mirror.offer(api, body, received) if mirror is not None and api is not None else None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        raw_path = request.rel_url.raw_path  # as the caller encoded it: %2F in a model name stays %2F
        target = self._target(is_anthropic(path, request.headers), raw_path, request.rel_url.raw_query_string)
        if "Accept-Encoding" in headers:
            accepted = [c for c in headers.pop("Accept-Encoding").split(",") if c.split(";")[0].strip() in _READABLE]
            if accepted:
                headers["Accept-Encoding"] = ",".join(accepted).strip()
        assert self._session is not None
        response: web.StreamResponse | None = None
        chunks: list[tuple[float, bytes]] | None = [] if ticket is not None else None
        try:
            async with self._session.request(request.method, yarl.URL(target, encoded=True), data=body,
                                             headers=headers, allow_redirects=False) as upstream:
                if counts is not None and upstream.status >= 400:
                    counts.upstream_errors += 1
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in _HOP:
                        response.headers.add(key, value)
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                # the copy goes to the mirror's process (a frame in a socket) before the caller has the whole
                # answer: the caller may stop this process the moment it has it. With a Content-Length that is
                # before the last piece is passed on; otherwise before the end of the chunked body.
                left = upstream.content_length
                async for piece in upstream.content.iter_any():
                    if chunks is not None:
                        chunks.append((time.perf_counter(), piece))
                    if left is not None:
                        left -= len(piece)
                        if left <= 0 and ticket is not None:
                            mirror.answered(ticket, upstream.status, upstream.headers, chunks)
                            ticket = None
                    try:
                        await response.write(piece)
                    except ConnectionResetError:  # the caller went away mid-answer (aiohttp's is a ClientError too)
                        if counts is not None:
                            counts.caller_closed += 1
                        return response  # `finally` records the copy's failure; nothing more can be sent
                if ticket is not None:
                    mirror.answered(ticket, upstream.status, upstream.headers, chunks)
                    ticket = None
                await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError) as exc:  # the upstream failed: unreachable, or cut off
            if counts is not None:
                counts.upstream_errors += 1
            if response is not None and response.prepared:
                if ticket is not None:  # what came before the upstream broke off, read as the truncated answer it is
                    mirror.answered(ticket, response.status, response.headers, chunks)
                    ticket = None
                raise  # the caller has a status already: end its connection, as the upstream ended ours
            if ticket is not None:
                mirror.answered(ticket, 0, {}, None, failure=f"{type(exc).__name__}: {exc}")
                ticket = None
            message = {"error": {"message": f"shadow proxy: the upstream could not be reached ({type(exc).__name__})",
                                 "type": "upstream_unreachable"}}
            return web.json_response(message, status=502)
        finally:
            if ticket is not None:
                mirror.answered(ticket, 0, {}, None, failure="the caller closed the connection before the answer ended")

    def _status(self, path: str) -> web.Response:
        data: dict[str, Any] = self.mirror.status() if self.mirror is not None else {"mirroring": False}
        if path.rstrip("/") == "/shadow/status":
            return web.json_response(data)
        rows = "".join(_row(c) for c in data.get("candidates", []))
        counts = html.escape(json.dumps(data.get("counts", {})))
        page = (
            "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=5><title>shadow proxy</title>"
            f"<h1>shadow proxy {html.escape(str(data.get('name', '')))}</h1>"
            f"<p>run {html.escape(str(data.get('run_id', '')))}, incumbent "
            f"{html.escape(str(data.get('incumbent') or 'none yet'))}; answers judged against the incumbent's</p>"
            f"<table><tr><th>candidate</th><th>judged</th><th>agreement</th><th>stop rule</th></tr>{rows}</table>"
            f"<p><code>{counts}</code></p>"
        )
        return web.Response(text=page, content_type="text/html")


def _row(candidate: dict[str, Any]) -> str:
    agreement = "" if candidate["agreement"] is None else f"{candidate['agreement']:.1%}"
    return (f"<tr><td>{html.escape(candidate['provider'])}</td><td>{candidate['judged']:,}</td><td>{agreement}</td>"
            f"<td>{html.escape(candidate['stop_rule'])}</td></tr>")
