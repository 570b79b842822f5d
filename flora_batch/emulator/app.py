"""The emulator's ASGI application: FLORA's routes over an ``EmulatorState``.

Every API request goes through the same steps (``Api._endpoint``): counted under its
route template, given its fault roll, delayed if the roll says slow, authenticated,
then perhaps rate-limited or answered by a "gateway", and only then handled.  Handlers
raise ``ApiProblem`` for every error, which becomes the contract's error envelope.

Routes (``ROUTES``; the counts in ``request_counts`` use these strings):

* ``GET /api/v1/techniques`` and ``GET /api/v1/techniques/{slug}``
* ``POST /api/v1/techniques/{slug}/runs``
* ``GET /api/v1/techniques/{slug}/runs/{run_id}`` and ``GET /api/v1/runs/{run_id}``
* ``GET /api/v1/technique-runs``
* ``POST /api/v1/assets``, ``GET /api/v1/assets``, ``GET /api/v1/assets/{asset_id}``,
  ``POST /api/v1/assets/{asset_id}/complete`` and ``.../retry`` (``asset_api.py``)
* ``GET /_media/{run_id}/{name}``: output files, no auth
* ``POST /_storage/{token}``: the fake storage of signed uploads, no auth
* ``GET /assets/{asset_id}/{name}``: a ready asset's bytes, no auth
* ``GET /_emulator/state`` and ``POST /_emulator/reset``: inspection, no auth

A run input naming one of the emulator's own asset URLs is accepted only once that asset
is ``ready`` (``require_ready_assets``).

With ``state_file``, ``PersistMiddleware`` saves the state after every request that may
change it (anything but GET, HEAD and OPTIONS), just before its answer starts, so a
killed emulator forgets nothing it answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .asset_api import ASSET_ROUTES, AssetApi, Handler
from .catalog import TechniqueDef
from .config import PROJECT_ID, EmulatorConfig
from .faults import FaultKind, Roll
from .media import OutputSpec, find_output, quirky_type, render_bytes
from .problems import ApiProblem, FieldError, invalid
from .render import Wire, millis, token_issued
from .responses import (
    BrokenResponse,
    RequestIdMiddleware,
    bad_gateway_response,
    broken_json,
    decode_cursor,
    encode_cursor,
    json_response,
    parse_limit,
    problem_response,
)
from .runs import RunRecord
from .state import EmulatorState
from .validation import CreateRequest, parse_json, validate_create

TECHNIQUES = "GET /api/v1/techniques"
TECHNIQUE = "GET /api/v1/techniques/{slug}"
CREATE = "POST /api/v1/techniques/{slug}/runs"
POLL = "GET /api/v1/techniques/{slug}/runs/{run_id}"
POLL_ANY = "GET /api/v1/runs/{run_id}"
LIST_RUNS = "GET /api/v1/technique-runs"
MEDIA = "GET /_media/{run_id}/{name}"
STATE = "GET /_emulator/state"
RESET = "POST /_emulator/reset"
OTHER = "* /api/v1/{path}"
ROUTES = (
    TECHNIQUES,
    TECHNIQUE,
    CREATE,
    POLL,
    POLL_ANY,
    LIST_RUNS,
    MEDIA,
    STATE,
    RESET,
    *ASSET_ROUTES,
)
RUN_STATUSES = ("pending", "running", "completed", "failed")


class Emulator(EmulatorState):
    """In-memory FLORA plus its ASGI app (``emu.app``); inspect it as its own state.

    ``emu.runs``, ``emu.charges``, ``emu.request_counts``, ``emu.charges_by_key()``,
    ``emu.total_charged()``, ``emu.our_total_charged()``, ``emu.served_media``,
    ``emu.assets``, ``emu.assets_by_sha256()``, ``emu.reset()`` and ``emu.save()`` come
    from ``EmulatorState``;
    ``emu.inject(kind)`` forces a fault on the next matching request (or, for
    ``fetch_refused`` and ``ingest_failure``, on the next asset they can strike).
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        super().__init__(config)
        self.app: Starlette = build_app(self)

    @property
    def state(self) -> EmulatorState:
        """The state object (the emulator itself), for code that wants to say so."""
        return self

    def inject(self, kind: FaultKind | str, *, times: int = 1, code: str | None = None) -> None:
        """Force fault ``kind`` on the next ``times`` requests it can apply to.

        ``code`` is the error code of a forced ``run_failure``.
        """
        self.dice.inject(kind, times=times, code=code)


def create_app(config: EmulatorConfig | None = None) -> Starlette:
    """A fresh emulator's ASGI app; the emulator is at ``app.state.emulator``."""
    return Emulator(config).app


def build_app(emulator: Emulator) -> Starlette:
    """The Starlette app serving ``emulator``."""
    api = Api(emulator)
    middleware = [Middleware(RequestIdMiddleware)]
    if emulator.config.state_file is not None:
        middleware.append(Middleware(PersistMiddleware, state=emulator))
    app = Starlette(
        routes=api.routes(),
        middleware=middleware,
        exception_handlers={HTTPException: _http_exception},
    )
    app.state.emulator = emulator
    return app


class PersistMiddleware:
    """Saves the state file once a request that may change state is handled, before its
    answer starts (or when it ends without one)."""

    READS = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in self.READS:
            await self.app(scope, receive, send)
            return
        saved = False

        async def save_then_send(message: Message) -> None:
            nonlocal saved
            if message["type"] == "http.response.start" and not saved:
                saved = True
                self.state.save()
            await send(message)

        try:
            await self.app(scope, receive, save_then_send)
        finally:
            if not saved:
                self.state.save()


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Router-level 404/405 in the contract's envelope."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "unknown_error")
    return problem_response(ApiProblem(code))


class Api:
    """The route handlers, bound to one emulator."""

    def __init__(self, emulator: Emulator) -> None:
        self.emu = emulator
        self.config = emulator.config

    def routes(self) -> list[Route]:
        """Starlette routes for every endpoint, API routes wrapped by ``_endpoint``."""
        e = self._endpoint
        return [
            Route("/api/v1/techniques", e(TECHNIQUES, "read", self.list_techniques)),
            Route("/api/v1/techniques/{slug}", e(TECHNIQUE, "read", self.get_technique)),
            Route(
                "/api/v1/techniques/{slug}/runs", e(CREATE, "create", self.create), methods=["POST"]
            ),
            Route("/api/v1/techniques/{slug}/runs/{run_id}", e(POLL, "poll", self.poll)),
            Route("/api/v1/runs/{run_id}", e(POLL_ANY, "poll", self.poll_any)),
            Route("/api/v1/technique-runs", e(LIST_RUNS, "read", self.list_runs)),
            *AssetApi(self.emu, e).routes(),
            Route("/api/v1/{path:path}", e(OTHER, "read", self.not_found), methods=_ALL_METHODS),
            Route("/_media/{run_id}/{name}", self.media),
            Route("/_emulator/state", self.state),
            Route("/_emulator/reset", self.reset, methods=["POST"]),
        ]

    def _endpoint(
        self, name: str, endpoint_class: str, handler: Handler
    ) -> Callable[[Request], Awaitable[Response]]:
        """Count, roll, delay, authenticate and fault a request before ``handler`` sees it."""

        async def endpoint(request: Request) -> Response:
            roll = self.emu.dice.roll(name, self.emu.count(name), endpoint_class)
            if roll.delay:
                await asyncio.sleep(roll.delay)
            try:
                self._authenticate(request)
                if roll.fault is FaultKind.BAD_GATEWAY:
                    return bad_gateway_response()
                if roll.fault is FaultKind.RATE_LIMIT:
                    raise self._rate_limited(roll)
                return await handler(request, roll)
            except ApiProblem as problem:
                return problem_response(problem)

        return endpoint

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("authorization")
        if not header:
            raise ApiProblem("unauthorized")
        scheme, _, key = header.partition(" ")
        expected = self.config.api_key.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), expected):
            raise ApiProblem("invalid_api_key")

    def _rate_limited(self, roll: Roll) -> ApiProblem:
        plan = self.config.faults
        headers: dict[str, str] = {}
        if plan.retry_after is not None and roll.variant >= plan.retry_after_missing:
            headers["retry-after"] = f"{plan.retry_after:g}"
            if plan.retry_after_ms:
                headers["retry-after-ms"] = f"{plan.retry_after * 1000:g}"
        return ApiProblem("rate_limited", headers=headers)

    def _wire(self, request: Request) -> Wire:
        return Wire(self.config, str(request.base_url))

    def _technique(self, request: Request) -> TechniqueDef:
        technique = self.emu.catalog.get(request.path_params["slug"])
        if technique is None:
            raise ApiProblem("not_found", "Technique not found.")
        return technique

    # -- catalog ----------------------------------------------------------------------

    async def list_techniques(self, request: Request, roll: Roll) -> Response:
        """``GET /techniques``: the catalog, searched and paged by offset."""
        limit = parse_limit(request.query_params.get("limit"))
        offset = decode_cursor(request.query_params.get("cursor"), "offset") or 0
        found = self.emu.catalog.search(request.query_params.get("query"))
        page = found[offset : offset + limit]
        more = offset + limit < len(found)
        wire = self._wire(request)
        meta = {
            "next_cursor": encode_cursor({"offset": offset + limit}) if more else None,
            "total_estimate": len(found),
        }
        return json_response({"techniques": [wire.technique(t) for t in page], "meta": meta})

    async def get_technique(self, request: Request, roll: Roll) -> Response:
        """``GET /techniques/{slug}`` (slug or ``tech_<slug>``)."""
        return json_response(self._wire(request).technique(self._technique(request)))

    # -- runs -------------------------------------------------------------------------

    async def create(self, request: Request, roll: Roll) -> Response:
        """``POST /techniques/{slug}/runs``: validate, maybe fault, create and charge once."""
        technique = self._technique(request)
        body = parse_json(await request.body())
        asset_check = (
            self.emu.asset_store.input_problem if self.config.require_ready_assets else None
        )
        create = validate_create(body, technique, self.config.allowed_hosts, asset_check)
        create = self._with_carried_key(create, request)
        if roll.fault is FaultKind.ERROR_BEFORE_CREATE:
            raise ApiProblem("unknown_error")
        if roll.fault is FaultKind.UNAVAILABLE_BEFORE_CREATE:
            raise ApiProblem("service_unavailable")
        if roll.fault is FaultKind.INSUFFICIENT_CREDITS:
            raise ApiProblem("insufficient_credits")
        result = await self.emu.create_run(technique, create)
        if roll.fault is FaultKind.ERROR_AFTER_CREATE:
            raise ApiProblem("unknown_error")
        wire, now = self._wire(request), self.emu.now()
        if result.replayed:
            answer = wire.run(result.run, technique, now)
        else:
            answer = wire.created(result.run, technique, now)
        status = 200 if result.replayed else self.config.create_status
        if roll.fault is FaultKind.DROP_AFTER_CREATE:
            return broken_json(answer, status)
        headers = {"idempotent-replayed": "true"} if result.replayed else None
        return json_response(answer, status, headers)

    def _with_carried_key(self, create: CreateRequest, request: Request) -> CreateRequest:
        """Apply the configured key carrier: body field, ``Idempotency-Key`` header, or both."""
        carrier = self.config.idempotency_carrier
        header = request.headers.get("idempotency-key")
        if carrier == "body":
            return create
        if header is not None and not header.strip():
            raise invalid([FieldError("Idempotency-Key", "Must not be empty")])
        if carrier == "header":
            return dataclasses.replace(create, idempotency_key=header)
        return dataclasses.replace(create, idempotency_key=create.idempotency_key or header)

    def _run_or_404(self, run_id: str, technique: TechniqueDef | None = None) -> RunRecord:
        run = self.emu.get_run(run_id)
        if run is None or (technique is not None and run.technique != technique.slug):
            raise ApiProblem("not_found", "Run not found.")
        return run

    @staticmethod
    def _poll_fault(roll: Roll) -> None:
        if roll.fault is FaultKind.POLL_ERROR:
            raise ApiProblem("unknown_error" if roll.variant < 0.5 else "service_unavailable")

    async def poll(self, request: Request, roll: Roll) -> Response:
        """``GET /techniques/{slug}/runs/{run_id}``."""
        self._poll_fault(roll)
        technique = self._technique(request)
        run = self._run_or_404(request.path_params["run_id"], technique)
        return json_response(self._wire(request).run(run, technique, self.emu.now()))

    async def poll_any(self, request: Request, roll: Roll) -> Response:
        """``GET /runs/{run_id}``: the same run object, found by id alone."""
        self._poll_fault(roll)
        run = self._run_or_404(request.path_params["run_id"])
        technique = self._technique_of(run)
        return json_response(self._wire(request).run(run, technique, self.emu.now()))

    def _technique_of(self, run: RunRecord) -> TechniqueDef:
        technique = self.emu.catalog.get(run.technique)
        assert technique is not None, run.technique  # runs are only made for known techniques
        return technique

    async def list_runs(self, request: Request, roll: Roll) -> Response:
        """``GET /technique-runs``: newest first, filtered, paged by a cursor.

        The cursor holds the last item's created time and sequence, so a page never
        repeats or skips a run older than it, whatever was created in between.  At most
        ``history_page_cap`` items come per page, whatever ``limit`` asks.
        """
        query = request.query_params
        limit = parse_limit(query.get("limit"))
        if self.config.history_page_cap is not None:
            limit = min(limit, self.config.history_page_cap)
        after = _history_cursor(query.get("cursor"))
        runs = self._filtered_runs(query.get("technique_id"), query.get("status"), after)
        if not self._same_scope(query.get("workspace_id"), query.get("project_id")):
            runs = []
        page, now, wire = runs[:limit], self.emu.now(), self._wire(request)
        items = [wire.run_item(r, self._technique_of(r), now) for r in page]
        more = len(runs) > limit
        meta = {
            "next_cursor": _encode_history_cursor(page[-1]) if more else None,
            "total_estimate": len(runs),
        }
        return json_response({"technique_runs": items, "meta": meta})

    def _same_scope(self, workspace_id: str | None, project_id: str | None) -> bool:
        """Whether list filters name the emulator's one workspace and project (or none)."""
        ours = self.config.workspace_id
        return workspace_id in (None, "", ours) and project_id in (None, "", PROJECT_ID)

    def _filtered_runs(
        self, technique_ref: str | None, status: str | None, after: tuple[int, int] | None
    ) -> list[RunRecord]:
        if status is not None and status not in RUN_STATUSES:
            allowed = " | ".join(f"'{s}'" for s in RUN_STATUSES)
            message = f"Invalid enum value. Expected {allowed}, received '{status}'"
            raise invalid([FieldError("status", message)])
        slug = None
        if technique_ref:
            technique = self.emu.catalog.get(technique_ref)
            if technique is None:
                return []
            slug = technique.slug
        return self.emu.list_runs(slug, status, after)

    async def not_found(self, request: Request, roll: Roll) -> Response:
        """Any other path under ``/api/v1`` (after authentication, as a real gateway would)."""
        raise ApiProblem("not_found")

    # -- media and inspection ---------------------------------------------------------

    async def media(self, request: Request) -> Response:
        """``GET /_media/{run_id}/{name}``: an output file (no auth; may expire or break)."""
        roll = self.emu.dice.roll(MEDIA, self.emu.count(MEDIA), "media")
        if roll.delay:
            await asyncio.sleep(roll.delay)
        try:
            run, spec = self._media_target(request)
            self._check_media_token(request, run, spec)
            if roll.fault is FaultKind.EXPIRE_MEDIA:
                raise ApiProblem("forbidden", "Media URL expired.")
        except ApiProblem as problem:
            return problem_response(problem)
        data, content_type = self._media_bytes(run, spec)
        if roll.fault is FaultKind.TRUNCATE_MEDIA:
            return BrokenResponse(data, media_type=content_type)
        self.emu.served_media[(run.run_id, spec.output_id)] = hashlib.sha256(data).hexdigest()
        return Response(data, media_type=content_type)

    def _media_target(self, request: Request) -> tuple[RunRecord, OutputSpec]:
        run = self._run_or_404(request.path_params["run_id"])
        technique = self._technique_of(run)
        spec = find_output(technique, request.path_params["name"].rsplit(".", 1)[0])
        if spec is None or request.path_params["name"] != spec.output_id + spec.ext:
            raise ApiProblem("not_found", "Media not found.")
        if run.status_at(self.emu.now()) != "completed" or spec.type == "text":
            raise ApiProblem("not_found", "Media not found.")
        return run, spec

    def _check_media_token(self, request: Request, run: RunRecord, spec: OutputSpec) -> None:
        ttl = self.config.media_ttl
        if ttl is None:
            return
        issued = token_issued(run.run_id, spec.output_id, request.query_params.get("token", ""))
        if issued is None:
            raise ApiProblem("forbidden", "Media URL is not signed.")
        if millis(self.emu.now()) >= issued + ttl * 1000:
            raise ApiProblem("forbidden", "Media URL expired.")

    def _media_bytes(self, run: RunRecord, spec: OutputSpec) -> tuple[bytes, str]:
        key = (run.run_id, spec.output_id)
        cached = self.emu.media_cache.get(key)
        if cached is None:
            quirks = self.config.media_quirks
            data = render_bytes(self._technique_of(run), spec, run.inputs, quirks=quirks)
            content_type = quirky_type(spec) if quirks else spec.content_type
            cached = self.emu.media_cache[key] = (data, content_type)
        return cached

    async def state(self, request: Request) -> Response:
        """``GET /_emulator/state``: runs, charges, counts (no auth: a local test aid)."""
        return JSONResponse(self.emu.snapshot())

    async def reset(self, request: Request) -> Response:
        """``POST /_emulator/reset``: forget everything."""
        self.emu.reset()
        return JSONResponse({"reset": True})


_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def _history_cursor(cursor: str | None) -> tuple[int, int] | None:
    """The ``history_order`` a ``/technique-runs`` cursor holds (None: the first page).

    Raises:
        ApiProblem: 400 ``input_validation_error`` for a cursor this server did not make.
    """
    at = decode_cursor(cursor, "at")
    seq = decode_cursor(cursor, "seq")
    return None if at is None or seq is None else (at, seq)


def _encode_history_cursor(last: RunRecord) -> str:
    """The cursor of the page after ``last``."""
    at, seq = last.history_order
    return encode_cursor({"at": at, "seq": seq})
