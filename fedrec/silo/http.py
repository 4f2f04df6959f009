"""`fedrec serve`: a silo's recommendations over HTTP (FastAPI), on loopback by default.

    GET /recommend/{user}?k=10  ->  {"silo", "user", "items": [{"item_id", "title", "score"}], "source", "run_id"}
    GET /health                 ->  {"silo", "run_id"}

The same code as `fedrec recommend`; it runs at the silo, next to the users' embeddings, and picks up a newer
federated run or new feedback without a restart. Errors are JSON with the error's name: 404 for an unknown user,
422 for a bad k, 503 while the silo has no trained model.
"""

from __future__ import annotations

import threading

from fedrec.config import Config
from fedrec.errors import ConfigError, FedrecError
from fedrec.recommend import NoTrainedModelError, SiloRecommender, UnknownUserError


def make_app(cfg: Config, silo_id: str, run_id: str | None = None):
    from fastapi import FastAPI, Query
    from fastapi.responses import JSONResponse

    recommender = SiloRecommender(cfg, silo_id, run_id)  # an unknown silo fails here, before serving
    lock = threading.Lock()
    app = FastAPI(title=f"fedrec silo {silo_id}", description="Top-K recommendations computed inside the silo")

    def error(status: int, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": type(exc).__name__, "detail": str(exc)})

    @app.get("/health")
    def health() -> dict:
        return {"silo": silo_id, "run_id": recommender.run_id}

    @app.get("/recommend/{user}")
    def recommend(user: int, k: int = Query(10, ge=1, le=1000)):
        try:
            with lock:
                recommender.refresh()
                return recommender.recommend(user, k).to_dict()
        except UnknownUserError as exc:
            return error(404, exc)
        except NoTrainedModelError as exc:
            return error(503, exc)
        except ConfigError as exc:
            return error(422, exc)
        except FedrecError as exc:
            return error(500, exc)

    return app


def serve(cfg: Config, silo_id: str, host: str = "127.0.0.1", port: int = 8000, run_id: str | None = None) -> None:
    import uvicorn

    uvicorn.run(make_app(cfg, silo_id, run_id), host=host, port=port, log_level="info")
