"""`fedrec serve`: a silo's recommendations over HTTP (FastAPI), on loopback by default.

    GET /recommend/{user}?k=10  ->  200 {"silo", "user", "items": [{"item_id", "title", "score", "because": [{"item_id", "title", "weight"}]}], "source", "run_id"}
    POST /recommend             ->  200 {"results": [answer, ...], "errors": {user: {"error", "detail"}}}: many users
                                    {"users": [...], "k": 10} in one request
    POST /feedback              ->  200 {"silo", "rows", "batch", "data_version", "folded_in"}: new interactions
                                    {"interactions": [{"user_id", "item_id", "rating", "timestamp"?}]}, validated,
                                    appended (a DVC data version) and folded into those users' vectors at once
    GET /health                 ->  200 {"silo", "run_id"}   (run_id: the run answers come from; null before one)

The same code as `fedrec recommend`; it runs at the silo, next to the users' embeddings, and picks up a newer
federated run or new feedback without a restart. Every error is ``{"error": <name>, "detail": <message>}``:

* 404 ``UnknownUserError`` (a user the silo does not know), 503 ``NoTrainedModelError`` (no finished run yet);
* 422 ``RequestValidationError`` (``user`` not an integer, ``k`` not an integer in 1..1000): the detail names the
  parameter and the rule, never the value sent;
* 404 ``NotFound`` (no such path), 405 ``MethodNotAllowed`` (another method than the route serves);
* POST /feedback: 422 ``InvalidFeedbackError`` (rows the silo's suite refuses: nothing appended);
* with API keys (fedrec.silo.serve_auth; required beyond loopback): 401 ``Unauthorized`` without a valid
  ``Authorization: Bearer <key>`` (GET /health is open), 429 ``TooManyRequests`` past the key's rate limit.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from http import HTTPStatus

import pandas as pd
from pydantic import BaseModel, Field

from fedrec.core.config import Config
from fedrec.core.errors import ConfigError, FedrecError
from fedrec.silo.feedback import FeedbackError, InvalidFeedbackError, append_feedback
from fedrec.silo.recommend import ANSWER_CACHE, NoTrainedModelError, SiloRecommender, UnknownUserError
from fedrec.silo.serve_auth import Gate

log = logging.getLogger(__name__)

ROUTES = "GET /recommend/{user}?k=10, POST /recommend, POST /feedback, GET /health"
#: the HTTP status of each named error a request can meet
STATUS = {UnknownUserError: 404, NoTrainedModelError: 503, ConfigError: 422}
#: cached answers (the latest first) a new snapshot computes before the watcher swaps it in, and for how long at most
#: (a POST /feedback arriving meanwhile waits on it)
WARM_ANSWERS, WARM_SECONDS = 1_000, 0.25


class Interaction(BaseModel):
    """One new interaction of POST /feedback (timestamp: now when left out)."""

    user_id: int
    item_id: int
    rating: float
    timestamp: int | None = None


class ManyUsers(BaseModel):
    """POST /recommend's body: 1 to 1,000 users and k."""

    users: list[int] = Field(min_length=1, max_length=1_000)
    k: int = Field(10, ge=1, le=1000)


class Feedback(BaseModel):
    """POST /feedback's body: 1 to 10,000 interactions."""

    interactions: list[Interaction] = Field(min_length=1, max_length=10_000)


def error_body(name: str, detail: str) -> dict:
    return {"error": name, "detail": detail}


def validation_detail(errors: list[dict]) -> str:
    """FastAPI's validation errors as "k (query): Input should be ..." without the value sent (it may be anything)."""
    parts = []
    for e in errors:
        source, *name = [str(p) for p in e.get("loc", ())] or ["request"]
        parts.append(f"{'.'.join(name) or source} ({source}): {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def status_name(status: int) -> str:
    """404 -> "NotFound": the error's name for an HTTP error that is not one of fedrec's."""
    try:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return f"HTTP{status}"


class LiveRecommender:
    """The recommender requests read, swapped whole when a newer run or new feedback appears. The check runs off the
    request path (a watcher thread every ``interval`` seconds, and at once after POST /feedback): a request takes
    ``.current`` and never waits on a lock, and a request in flight during a swap finishes on the model it started
    with. A reload that fails keeps the current recommender (logged)."""

    def __init__(self, cfg: Config, silo_id: str, run_id: str | None = None, interval: float = 0.5,
                 answer_cache: int = ANSWER_CACHE):
        self.cfg, self.silo_id, self.run_id, self.interval = cfg, silo_id, run_id, interval
        self.answer_cache = answer_cache
        self.current = SiloRecommender(cfg, silo_id, run_id, answer_cache)  # an unknown silo fails here, before serving
        self._reloading = threading.Lock()  # only reloads take it
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def reload(self, warm: int = 0) -> SiloRecommender:
        """A fresh recommender when the run or the silo's data changed (swapped in atomically); else the current.
        ``warm`` > 0: the fresh one first answers the current one's ``warm`` latest cached requests, so requests after
        the swap stay lookups (the watcher does; POST /feedback does not wait for it)."""
        with self._reloading:
            current = self.current
            if current._stamp() != current._loaded:
                fresh = SiloRecommender(self.cfg, self.silo_id, self.run_id, self.answer_cache)
                fresh.warm(list(reversed(current._bodies))[:warm] if warm > 0 else [], WARM_SECONDS)
                self.current = fresh
            return self.current

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reload(warm=WARM_ANSWERS)
            except Exception:  # noqa: BLE001 - keep serving the current model
                log.exception("silo %s: reloading the recommender failed; serving the current one", self.silo_id)

    def start(self) -> None:
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name=f"fedrec-serve-{self.silo_id}", daemon=True)
            self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)


def make_app(cfg: Config, silo_id: str, run_id: str | None = None, reload_interval: float = 0.5,
             rate_limit: float = 200.0, burst: int = 400, answer_cache: int = ANSWER_CACHE):
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    live = LiveRecommender(cfg, silo_id, run_id, reload_interval, answer_cache)  # an unknown silo fails here, before serving
    feedback_lock = threading.Lock()  # appends are serialised; answers never wait on it

    @contextlib.asynccontextmanager
    async def lifespan(app):
        live.start()
        yield
        live.stop()

    app = FastAPI(title=f"fedrec silo {silo_id}", description="Top-K recommendations computed inside the silo",
                  lifespan=lifespan)
    app.state.live = live
    gate = Gate(cfg, silo_id, rate_limit, burst)  # API keys (fedrec serve-keys) and each key's rate limit

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if request.url.path == "/health" or not gate.required:
            return await call_next(request)
        client = gate.client(request.headers.get("authorization"))
        if client is None:
            return JSONResponse(status_code=401, headers={"WWW-Authenticate": "Bearer"}, content=error_body(
                "Unauthorized", "a valid API key is required: Authorization: Bearer <key> (fedrec serve-keys add)"))
        wait = gate.allow(client)
        if wait > 0:
            return JSONResponse(status_code=429, headers={"Retry-After": str(max(1, round(wait)))},
                                content=error_body("TooManyRequests", f"rate limit of {gate.rate:g} requests/s per "
                                                                      "key reached; retry later"))
        return await call_next(request)

    def error(status: int, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=status, content=error_body(type(exc).__name__, str(exc)))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content=error_body(type(exc).__name__, validation_detail(exc.errors())))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = {404: f"no such path; served: {ROUTES}",  # neither the path nor the method sent is echoed
                  405: f"method not allowed; served: {ROUTES}"}.get(exc.status_code, status_name(exc.status_code))
        return JSONResponse(status_code=exc.status_code, content=error_body(status_name(exc.status_code), detail),
                            headers=getattr(exc, "headers", None))

    @app.get("/health")
    def health() -> dict:
        return {"silo": silo_id, "run_id": live.current.run_id}

    @app.get("/recommend/{user}")
    async def recommend(user: int, k: int = Query(10, ge=1, le=1000)):
        """On the event loop itself (a cached answer is a lookup, a fresh one about a millisecond of scoring): no hop
        to a thread, no lock; the body is the snapshot's JSON bytes as they are."""
        try:
            return Response(live.current.recommend_json(user, k), media_type="application/json")
        except FedrecError as exc:
            return error(STATUS.get(type(exc), 500), exc)

    @app.post("/recommend")
    def recommend_many(body: ManyUsers):
        """Top-k for many users in one request: {"results": [answer, ...], "errors": {user: {"error", "detail"}}}."""
        rec, results, errors = live.current, [], {}
        for user in body.users:
            try:
                results.append(rec.recommend(user, body.k).to_dict())
            except FedrecError as exc:
                errors[str(user)] = error_body(type(exc).__name__, str(exc))
        return {"results": results, "errors": errors}

    @app.post("/feedback")
    def feedback(body: Feedback):
        """New interactions: validated with the silo's suite, appended as a batch (a DVC data version), and folded
        into those users' vectors at once: their next answer reflects them."""
        now = int(time.time())
        frame = pd.DataFrame([{"user_id": i.user_id, "item_id": i.item_id, "rating": i.rating,
                               "timestamp": now if i.timestamp is None else i.timestamp} for i in body.interactions])
        try:
            with feedback_lock:
                result = append_feedback(cfg, silo_id, frame)
                rec = live.reload()  # the next answer comes from a recommender that folded this batch in
            return {"silo": silo_id, "rows": result.rows, "batch": result.batch.name,
                    "data_version": result.data_version, "folded_in": rec.folded_in}
        except (InvalidFeedbackError, FeedbackError) as exc:
            return error(422, exc)
        except FedrecError as exc:
            return error(500, exc)

    return app


def serve(cfg: Config, silo_id: str, host: str = "127.0.0.1", port: int = 8000, run_id: str | None = None) -> None:
    import uvicorn

    uvicorn.run(make_app(cfg, silo_id, run_id), host=host, port=port, log_level="info")
