"""``eagrl serve``: the policy model behind KServe's ModelServer, with the clinical and OpenAI routes.

Routes (``<name>`` is ``serve.model_name``):

* health: ``GET /`` (live), ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v1/models/<name>``,
  ``GET /v2/models/<name>/ready`` (KServe's own, never behind the API key, for probes);
* KServe predict: ``POST /v1/models/<name>:predict`` (``{"instances": [patient, ...]}``) and
  ``POST /v2/models/<name>/infer`` (a BYTES input ``patient`` of JSON strings);
* OpenAI: ``POST /openai/v1/completions``, ``POST /openai/v1/chat/completions``, ``GET /openai/v1/models``;
* clinical: ``POST /clinical/v1/predict`` (one patient, :class:`~eagrl.serve.schema.PatientIn`) ->
  :class:`~eagrl.serve.schema.ClinicalPrediction`; ``GET /clinical/v1/features`` (the accepted names).

Every request except the health routes needs the API key when ``$<serve.api_key_env>`` is set
(``Authorization: Bearer <key>`` or ``X-API-Key``); bodies above ``serve.max_body_bytes`` get 413, requests
unanswered after ``serve.request_timeout_s`` get 504, bad input gets a 4xx naming the field (never echoing
values). Request content is never logged.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from fastapi import Request
from fastapi.exceptions import RequestValidationError

from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.config.serve import ServeConfig
from eagrl.data.schema import FeatureSpec, load_specs, specs_dir
from eagrl.errors import ConfigError, DataError
from eagrl.serve.openai_routes import error_response, register_openai_routes
from eagrl.serve.schema import ClinicalPrediction, PatientIn

log = logging.getLogger(__name__)

OPEN_PATHS = re.compile(r"^/$|^/v2/health/(live|ready)$|^/v1/models/[^/:]+$|^/v2/models/[^/]+/ready$")


# ====================================================================== what is served
def load_features(cfg: ServeConfig) -> list[FeatureSpec]:
    """The features the clinical route accepts: a cohort's features.json, else the dataset's spec file."""
    if cfg.features_file:
        path = Path(cfg.features_file)
        if not path.is_file():
            raise ConfigError(f"serve.features_file: {path} does not exist")
        return [FeatureSpec.from_dict(d) for d in json.loads(path.read_text(encoding="utf-8"))]
    path = specs_dir() / f"{cfg.dataset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in specs_dir().glob("*.yaml"))
        raise ConfigError(f"serve.dataset={cfg.dataset!r} has no feature specs; give serve.features_file or one "
                          f"of {known}")
    return load_specs(path)


def resolve_model_uri(source: str) -> str:
    """``models:/name@alias`` -> ``models:/name/<version>`` (so the cached download is the right version)."""
    m = re.fullmatch(r"models:/([^/@]+)@([^/]+)", source)
    if not m:
        return source
    from mlflow import MlflowClient

    name, alias = m.groups()
    try:
        version = MlflowClient().get_model_version_by_alias(name, alias).version
    except Exception as exc:  # mlflow raises its own types; the message says what is missing
        raise ConfigError(f"cannot resolve {source}: {str(exc).splitlines()[0]}") from None
    log.info("%s is version %s", source, version)
    return f"models:/{name}/{version}"


def resolve_policy(model_cfg: ModelConfig) -> ModelConfig:
    """A registered eagrl policy (MLflow pyfunc: ``artifacts/policy.json`` naming the base model, and
    ``artifacts/adapter``), by ``models:/`` URI or as a local folder (KServe's /mnt/models), becomes its base
    model config with the adapter attached; any other source is returned unchanged."""
    from eagrl.llm.loading import mlflow_model_dir

    source = model_cfg.source
    if source.startswith("models:/"):
        folder = mlflow_model_dir(source, model_cfg.resolved_cache_dir())
    elif Path(source).is_dir():
        folder = Path(source)
    else:
        return model_cfg
    candidates = [folder / "policy.json", folder.parent / "policy.json", *sorted(folder.rglob("policy.json"))]
    spec_file = next((c for c in candidates if c.is_file() and (c.parent / "adapter").is_dir()), None)
    if spec_file is None:
        return model_cfg  # a plain checkpoint (or adapter) folder
    try:
        spec = json.loads(spec_file.read_text(encoding="utf-8"))["model"]
        resolved = ModelConfig(**{**spec, "adapter": str(spec_file.parent / "adapter"), "merge_adapter": True,
                                  "cache_dir": model_cfg.cache_dir})
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{spec_file} is not an eagrl policy spec: {exc}") from None
    log.info("policy %s: base %s with its LoRA adapter", source, resolved.source)
    return resolved


def build_model(serve_cfg: ServeConfig, model_cfg: ModelConfig, gen_cfg: GenerationConfig,
                features: Sequence[FeatureSpec] | None = None):
    """The loaded :class:`~eagrl.serve.model.EagrlModel` for these settings."""
    _import_kserve()
    from eagrl.serve.model import make_model

    model_cfg = resolve_policy(model_cfg.model_copy(update={"source": resolve_model_uri(model_cfg.source)}))
    if model_cfg.adapter:
        model_cfg = model_cfg.model_copy(update={"adapter": resolve_model_uri(model_cfg.adapter)})
    # a batch's rows keep their keys/values between the structured generator's fields: room for all of them
    # (twice the prompt budget each), or the prefix store evicts rows mid-response and recomputes their prompts
    room = 2 * serve_cfg.max_batch_size * (gen_cfg.max_prompt_tokens or serve_cfg.max_prompt_tokens)
    gen_cfg = gen_cfg.model_copy(update={"batch_size": max(gen_cfg.batch_size, serve_cfg.max_batch_size),
                                         "prefix_cache_tokens": max(gen_cfg.prefix_cache_tokens, room)
                                         if gen_cfg.prefix_cache_tokens else 0})
    model = make_model(serve_cfg, model_cfg, gen_cfg, features if features is not None else load_features(serve_cfg))
    model.load()
    return model


def _import_kserve() -> None:
    """Import KServe with an empty command line: kserve.model_server parses sys.argv when imported, and
    argparse would read eagrl's own options as abbreviations of KServe's (--timeout as --timeout-keep-alive)."""
    import sys

    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve.model_server  # noqa: F401

        import eagrl.serve.model  # noqa: F401
    finally:
        sys.argv = argv


# ====================================================================== middleware
class GuardMiddleware:
    """API key and body-size checks before any route runs (pure ASGI, so oversized bodies are never read whole)."""

    def __init__(self, app, cfg: ServeConfig, api_key: str | None):
        self.app, self.cfg, self.api_key = app, cfg, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key and not OPEN_PATHS.match(scope.get("path", "")):
            given = headers.get("x-api-key") or _bearer(headers.get("authorization", ""))
            if not given:
                return await _reply(send, 401, "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'",
                                    "authentication_error")
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return await _reply(send, 401, "invalid API key", "authentication_error")
        limit = self.cfg.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _reply(send, 413, f"request body of {length} bytes is above the limit of {limit} bytes",
                                "request_too_large")
        seen = 0

        async def limited():  # bodies without a length (chunked) are counted as they arrive
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _reply(send, 413, f"request body is above the limit of {limit} bytes", "request_too_large")


class _TooLarge(Exception):
    pass


def _bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def _reply(send, status: int, message: str, kind: str) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "code": str(status)}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ====================================================================== routes
def add_routes(app, model) -> None:
    """Clinical and OpenAI routes, clear 4xx bodies for invalid requests, the guard middleware."""
    cfg = model.serve_cfg

    @app.post("/clinical/v1/predict", response_model=ClinicalPrediction, tags=["clinical"])
    async def clinical_predict(patient: PatientIn) -> ClinicalPrediction:
        try:
            return await model.clinical(patient)
        except DataError as exc:
            return error_response(422, str(exc), "visits")
        except asyncio.TimeoutError:
            return error_response(504, f"no answer within {cfg.request_timeout_s:g} s", kind="timeout")

    @app.get("/clinical/v1/features", tags=["clinical"])
    async def clinical_features():
        return {"dataset": cfg.dataset, "task": cfg.task,
                "features": [{"name": f.name, "unit": f.unit, "aliases": list(f.aliases)} for f in model.features]}

    async def invalid(request: Request, exc: RequestValidationError):
        problems = []
        for e in exc.errors():
            if e.get("type") == "json_invalid":
                problems.append(f"body is not valid JSON ({e.get('ctx', {}).get('error', 'parse error')} at "
                                f"character {e.get('loc', ('', '?'))[-1]})")
                continue
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {e.get('msg', 'invalid')}")
        return error_response(422 if problems else 400, "invalid request: " + "; ".join(problems))

    async def timed_out(request: Request, exc: asyncio.TimeoutError):
        return error_response(504, f"no answer within {cfg.request_timeout_s:g} s", kind="timeout")

    register_openai_routes(app, model)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(asyncio.TimeoutError, timed_out)
    api_key = os.environ.get(cfg.api_key_env) or None
    app.add_middleware(GuardMiddleware, cfg=cfg, api_key=api_key)
    log.info("API key %s", "required" if api_key else f"not configured (set ${cfg.api_key_env} to require one)")


# ====================================================================== the server
def _model_server_class():
    import kserve
    from kserve.protocol.rest.server import RESTServer

    class EagrlModelServer(kserve.ModelServer):
        """KServe's ModelServer bound to ``host`` (KServe always binds 0.0.0.0; tests and laptops want 127.0.0.1)."""

        def __init__(self, host: str, **kwargs):
            super().__init__(**kwargs)
            self.host = host

        def start(self, models) -> None:  # the parent's single-process REST path, with our host
            self._register_and_check_atleast_one_model_is_ready(models)
            self._rest_server = RESTServer("kserve.model_server:app", self.dataplane, self.model_repository_extension,
                                           self.http_port, access_log_format=self.access_log_format,
                                           grace_period=self.grace_period, event_loop=self.event_loop,
                                           timeout_keep_alive=self.timeout_keep_alive)
            self._rest_server.config.host = self.host
            self.servers.append(self._rest_server.start())
            self.setup_event_loop()
            self.register_signal_handler()
            asyncio.run(self._serve())

        def stop(self, sig: int):
            if self._rest_server is not None:
                self._rest_server._server.should_exit = True
            for name in list(self.registered_models.get_models().keys()):
                self.registered_models.unload(name)

    return EagrlModelServer


def _log_to_stderr() -> None:
    """eagrl's own log lines (counts and timings, never request content) beside KServe's."""
    root = logging.getLogger("eagrl")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def serve(serve_cfg: ServeConfig, model_cfg: ModelConfig, gen_cfg: GenerationConfig) -> None:
    """Load the model and serve until SIGINT/SIGTERM."""
    _import_kserve()
    import kserve.model_server

    _log_to_stderr()
    model = build_model(serve_cfg, model_cfg, gen_cfg)
    add_routes(kserve.model_server.app, model)
    server = _model_server_class()(serve_cfg.host, http_port=serve_cfg.port, enable_grpc=False,
                                   enable_docs_url=True, grace_period=5)
    server.start([model])
