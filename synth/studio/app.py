"""The studio's HTTP edge: routes, the token check, size limits and security headers. The
logic is in catalog (reading runs) and jobs (generating); this module only translates.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from synth.errors import RequestError
from synth.shards import image_type
from synth.studio.catalog import MAX_PAGE, SCORES, Catalog, SampleQuery, StudioRun
from synth.studio.jobs import (
    GUIDANCE_RANGE,
    LORA_SCALE_RANGE,
    STEPS_RANGE,
    GenerateRequest,
    GenerationQueue,
    Job,
    class_prompts,
    native_size,
    resolve,
    with_stored_scores,
)
from synth.studio.snippet import reproduce_snippet

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024  # bytes a request body may have
MAX_TEMPLATES = 50  # prompt templates offered per class
TOKEN_COOKIE = "synth_token"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
# No inline script anywhere: a <script> that reached a page through user text cannot run.
APP_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'self'"
)
# The report is synth's own static HTML: its inline styles and data: images, never scripts.
REPORT_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data: 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'self'"
)
_Score = Annotated[float | None, Query(ge=0, le=1)]


def create_app(
    catalog: Catalog,
    queue: GenerationQueue | None = None,
    token: str | None = None,
    allowed_hosts: tuple[str, ...] | None = LOOPBACK,
) -> FastAPI:
    """The studio app over these runs. With a token, every request must carry it; with
    allowed_hosts, the Host header must name one of them (a page on another site that rebinds
    its DNS name to 127.0.0.1 cannot read the studio)."""
    app = FastAPI(title="synth studio", docs_url=None, redoc_url=None, openapi_url=None)
    queue = queue or GenerationQueue()
    templates: dict[tuple[str, str], list[str]] = {}

    def prompt_templates(run: StudioRun, label: str) -> list[str]:
        if (run.name, label) not in templates:
            captions = sorted(
                {i.caption for i in catalog.real_images(run).values() if i.label == label} - {None}
            )
            templates[(run.name, label)] = class_prompts(run, label, captions)[:MAX_TEMPLATES]
        return templates[(run.name, label)]

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]):
        host = request.headers.get("host", "").rsplit(":", 1)[0] if request.headers else ""
        if allowed_hosts is not None and host not in allowed_hosts:
            return _error("host", f"{host!r} is not this studio's host", 400)
        given = _given_token(request)
        if token is not None and not (
            given and hmac.compare_digest(given.encode(), token.encode())
        ):
            return _error("token", "missing or wrong; open the studio with ?token=TOKEN", 401)
        if request.method not in ("GET", "HEAD"):
            # Only the studio's own page may send work: another site's page can POST to
            # 127.0.0.1 without a preflight only with a form content type, or says its origin.
            refused = _cross_site(request)
            if refused:
                return refused
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return _error("body", f"larger than {MAX_BODY} bytes", 413)
        response = await call_next(request)
        policy = REPORT_POLICY if request.url.path.endswith("/report") else APP_POLICY
        response.headers.setdefault("Content-Security-Policy", policy)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if token is not None and request.query_params.get("token") == token:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError):
        return _error(err.field, str(err).removeprefix(f"{err.field}: "), err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"] if p not in ("query", "path", "body"))
        return _error(field or "request", first["msg"], 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        return _error("path", str(err.detail), err.status_code)

    @app.get("/api/runs")
    def runs() -> list[dict]:
        return [
            {"name": run.name, "path": str(run.path), "rows": run.rows()}
            for run in catalog.runs.values()
        ]

    @app.get("/api/runs/{name}")
    def run_detail(name: str) -> dict:
        run = catalog.run(name)
        spec = run.spec
        generator = spec.generator
        return {
            "name": run.name,
            "path": str(run.path),
            "rows": run.rows(),
            "spec_name": spec.name,
            "curated": run.curated,
            "scores": SCORES if run.curated else {},
            "memorisation_threshold": run.memorisation_threshold if run.curated else None,
            "rejected": bool(run.rejected_files()),
            "report": run.report is not None,
            "real": bool(catalog.real_images(run)),
            "real_note": catalog.real_note(run),
            "classes": {
                label: {
                    "prompts": prompt_templates(run, label),
                    "negative_prompt": cls.negative_prompt,
                    "lora": str(cls.lora.path) if cls.lora else None,
                    "lora_scale": cls.lora.scale if cls.lora else None,
                }
                for label, cls in spec.classes.items()
            },
            "generator": {
                "model": generator.model,
                "steps": generator.steps,
                "guidance_scale": generator.guidance_scale,
                "width": generator.width,
                "height": generator.height,
                "native_size": native_size(generator),
                "scheduler": generator.scheduler,
                "dtype": generator.dtype,
            },
            "limits": {
                "steps": STEPS_RANGE,
                "guidance_scale": GUIDANCE_RANGE,
                "lora_scale": LORA_SCALE_RANGE,
            },
        }

    @app.get("/api/samples")
    def samples(
        run: Annotated[str | None, Query(max_length=200)] = None,
        label: Annotated[str | None, Query(max_length=200)] = None,
        q: Annotated[str | None, Query(max_length=500)] = None,
        seed: Annotated[int | None, Query(ge=0)] = None,
        attempt: Annotated[int | None, Query(ge=1, le=1000)] = None,
        status: Literal["kept", "rejected", "all"] = "kept",
        source: Literal["synthetic", "real", "all"] = "synthetic",
        min_label_score: _Score = None,
        max_label_score: _Score = None,
        min_real_similarity: Annotated[float | None, Query(ge=-1, le=1)] = None,
        max_real_similarity: Annotated[float | None, Query(ge=-1, le=1)] = None,
        passed: bool | None = None,
        flagged: bool | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 48,
        offset: Annotated[int, Query(ge=0, le=10**12)] = 0,
    ) -> dict:
        studio_run = catalog.run(run)
        ranges = {
            column: (low, high)
            for column, low, high in (
                ("qc_label_score", min_label_score, max_label_score),
                ("qc_real_similarity", min_real_similarity, max_real_similarity),
            )
            if low is not None or high is not None
        }
        query = SampleQuery(
            label, q, seed, attempt, status, source, ranges, passed, flagged, limit, offset
        )
        page = catalog.samples(studio_run, query)
        return {"run": studio_run.name, "total": page.total, "samples": page.samples}

    @app.get("/api/samples/{run}/{sample_id}")
    def sample(run: str, sample_id: str) -> dict:
        studio_run = catalog.run(run)
        row, rejected = catalog.sample(studio_run, sample_id)
        real = catalog.real_images(studio_run)

        def nearest(of: dict) -> dict | None:
            image = real.get(of.get("qc_nearest_real"))
            return image and {"id": image.image_id, "label": image.label, "split": image.split}

        return {
            "run": studio_run.name,
            "sample": row,
            "rejected": [r for r in rejected if r is not row],
            "nearest_real": nearest(row),
            # each render's own nearest real image, by attempt
            "nearest_real_by_attempt": {
                str(r["attempt"]): nearest(r) for r in [row, *rejected] if nearest(r)
            },
            "snippet": reproduce_snippet(row, config=studio_run.spec.generator.config),
        }

    @app.get("/api/samples/{run}/{sample_id}/image")
    def sample_image(
        run: str, sample_id: str, attempt: Annotated[int | None, Query(ge=1, le=1000)] = None
    ) -> Response:
        data = catalog.image(catalog.run(run), sample_id, attempt)
        return Response(data, media_type=image_type(data), headers=_cached)

    @app.get("/api/real/{run}/image")
    def real_image(run: str, id: Annotated[str, Query(max_length=1000)]) -> Response:
        path = catalog.real_image_file(catalog.run(run), id)
        data = path.read_bytes()
        return Response(data, media_type=image_type(data), headers=_cached)

    def prepare(request: GenerateRequest) -> tuple[Job, bytes | None]:
        """The job, and the stored image of the curated render it reproduces, if it names one."""
        run = catalog.run(request.run)
        label = request.label or next(iter(run.spec.classes))
        templates = prompt_templates(run, label) if label in run.spec.classes else []
        job = resolve(request, run, templates)
        stored = None
        if request.sample_id is not None and run.curated:
            rows = catalog.rows(run, request.sample_id)
            if any(r["attempt"] == job.attempt for r in rows):
                stored = catalog.image(run, request.sample_id, job.attempt)
        return job, stored

    @app.post("/api/generate")
    async def generate(request: Request) -> Response:
        body = await _read_body(request)
        try:
            generate_request = GenerateRequest.model_validate_json(body or b"{}")
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "body"
            return _error(field, first["msg"], 422)
        job_id = request.headers.get("x-synth-job")
        if job_id is not None and not (0 < len(job_id) <= 64 and job_id.isalnum()):
            return _error("x-synth-job", "give up to 64 letters and digits", 422)
        # Reading a source's captions or a model's config can take a while: not on the loop.
        job, stored = await run_in_threadpool(prepare, generate_request)
        _, future = queue.submit(job, job_id)
        generated = await asyncio.wrap_future(future)
        if stored is not None:
            generated = await run_in_threadpool(with_stored_scores, generated, stored)
        name = f"{generated.provenance['sample_id']}.png"
        return Response(
            generated.png,
            media_type="image/png",
            headers={
                "Content-Disposition": f'inline; filename="{_header_safe(name)}"',
                "X-Synth-Seed": str(generated.provenance["seed"]),
                "X-Synth-Seconds": f"{generated.seconds:.3f}",
                "Cache-Control": "no-store",
            },
        )

    @app.get("/api/queue")
    def queue_position(job: Annotated[str, Query(max_length=64)] = "") -> dict:
        return queue.position(job)

    @app.get("/runs/{run}/report")
    def report(run: str) -> FileResponse:
        studio_run = catalog.run(run)
        if studio_run.report is None:
            raise RequestError(
                "report", f"run {run} has no {Path('eval') / 'report.html'} yet", 404
            )
        return FileResponse(studio_run.report, media_type="text/html")

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.catalog = catalog
    app.state.queue = queue
    return app


_cached = {"Cache-Control": "private, max-age=3600"}


def _error(field: str, message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": f"{field}: {message}", "field": field}, status_code=status)


def _cross_site(request: Request) -> JSONResponse | None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return _error("content-type", "send the body as application/json", 415)
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    if request.headers.get("sec-fetch-site") == "cross-site" or (
        origin is not None and origin.split("://", 1)[-1] != host
    ):
        return _error("origin", f"{origin or 'another site'} may not use this studio", 403)
    return None


def _given_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return (
        request.headers.get("x-synth-token")
        or request.query_params.get("token")
        or request.cookies.get(TOKEN_COOKIE)
    )


async def _read_body(request: Request) -> bytes:
    """The body, refused past MAX_BODY even when no Content-Length announced it."""
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_BODY:
            raise RequestError("body", f"larger than {MAX_BODY} bytes", 413)
    return bytes(body)


def _header_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:200]
