"""The served policy model: one KServe model class per generation backend, chosen by one factory.

:class:`EagrlModel` (a ``kserve.Model``) holds what every backend shares: the clinical prediction (one
patient JSON -> prompt -> structured P_QD generation -> probability, steps, features), KServe v1/v2 predict
over patient records, and raw text generation for the OpenAI routes, each behind a :class:`Batcher`.
:class:`TransformersModel` and :class:`VLLMModel` only build their backend (the existing
:mod:`eagrl.llm.backends` classes; vLLM imported lazily inside its branch). :func:`make_model` picks one:
``backend="auto"`` means vLLM when it is installed and a GPU is present, transformers otherwise.

Nothing here logs request content: log lines carry counts and timings only.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import kserve
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from pydantic import ValidationError

from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.config.serve import ServeConfig
from eagrl.data.schema import FeatureSpec
from eagrl.errors import DataError
from eagrl.llm.backends import GenerationBackend, Sample, SamplingParams, make_backend
from eagrl.llm.prompt import build_prompt, encode
from eagrl.llm.structured import StructuredGenerator
from eagrl.serve.batching import Batcher
from eagrl.serve.schema import ClinicalPrediction, PatientIn, Step, to_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextRequest:
    """One OpenAI prompt, already tokenised; requests with equal ``params`` decode in one backend call."""

    prompt_ids: tuple[int, ...]
    params: SamplingParams
    n: int
    seed: int


def validation_message(exc: ValidationError) -> str:
    """Where and what, one line per problem, without echoing the input (it may be patient data)."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())


class EagrlModel(kserve.Model):
    """Shared serving logic; subclasses say how the generation backend is built."""

    backend_name = ""

    def __init__(self, serve_cfg: ServeConfig, model_cfg: ModelConfig, gen_cfg: GenerationConfig,
                 features: Sequence[FeatureSpec]):
        super().__init__(serve_cfg.model_name)
        self.serve_cfg, self.model_cfg, self.gen_cfg = serve_cfg, model_cfg, gen_cfg
        self.features = list(features)
        self.backend: GenerationBackend | None = None

    # ------------------------------------------------------------------ loading
    def build_backend(self) -> GenerationBackend:
        raise NotImplementedError

    def load(self) -> bool:
        t0 = time.perf_counter()
        self.backend = self.build_backend()
        self.generator = StructuredGenerator(self.backend, self.gen_cfg, self.features)
        worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="eagrl-model")
        opts = dict(max_batch_size=self.serve_cfg.max_batch_size, max_wait_ms=self.serve_cfg.max_wait_ms)
        self.clinical_batcher = Batcher(self._clinical_batch, worker, name="clinical", **opts)
        self.text_batcher = Batcher(self._text_batch, worker, name="text", **opts)
        self.ready = True
        log.info("model %s loaded on the %s backend in %.1f s", self.name, self.backend_name,
                 time.perf_counter() - t0)
        return self.ready

    @property
    def tokenizer(self):
        return self.backend.tokenizer

    # ------------------------------------------------------------------ clinical prediction
    async def clinical(self, patient: PatientIn) -> ClinicalPrediction:
        record = to_record(patient, self.features, max_visits=self.serve_cfg.max_visits)
        out = await self.clinical_batcher.submit(record, timeout=self.serve_cfg.request_timeout_s)
        return out.model_copy(update={"patient_id": patient.patient_id})

    def _clinical_batch(self, records) -> list[ClinicalPrediction]:
        t0 = time.perf_counter()
        prompts = [build_prompt(r, self.features, dataset=self.serve_cfg.dataset, task=self.serve_cfg.task,
                                cfg=self.gen_cfg, tokenizer=self.tokenizer) for r in records]
        ids = [encode(p, self.tokenizer) for p in prompts]
        # every request gets the same seed, so its answer does not depend on what it was batched with
        responses = [g[0] for g in self.generator.generate(ids, n=1, seed=[self.gen_cfg.seed] * len(ids))]
        log.info("clinical batch of %d in %.2f s", len(records), time.perf_counter() - t0)
        return [ClinicalPrediction(
            probability=r.probability, well_formed=r.well_formed,
            steps=[Step(subquestion=s.subquestion, answer=s.answer) for s in r.parsed.steps],
            important_features=r.parsed.known_features,
            task=self.serve_cfg.task, model=self.name, prompt_tokens=len(i), features_shown=len(p.features_shown),
        ) for r, p, i in zip(responses, prompts, ids)]

    # ------------------------------------------------------------------ text generation (OpenAI routes)
    async def complete(self, request: TextRequest) -> list[Sample]:
        return await self.text_batcher.submit(request, timeout=self.serve_cfg.request_timeout_s)

    def _text_batch(self, requests: Sequence[TextRequest]) -> list[list[Sample]]:
        t0 = time.perf_counter()
        out: list = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((dataclasses.astuple(r.params), r.n), []).append(i)
        for (_, n), idx in groups.items():
            params = requests[idx[0]].params
            samples = self.backend.generate([list(requests[i].prompt_ids) for i in idx], params, n=n,
                                            seed=[requests[i].seed for i in idx])
            for i, s in zip(idx, samples):
                out[i] = s
        log.info("text batch of %d in %.2f s", len(requests), time.perf_counter() - t0)
        return out

    # ------------------------------------------------------------------ KServe v1 / v2 predict
    async def predict(self, payload, headers=None, response_headers=None):
        """v1: ``{"instances": [patient, ...]}`` -> ``{"predictions": [...]}``; v2: a BYTES input ``patient``
        of JSON strings -> outputs ``probability`` (FP64, -1 where none) and ``prediction`` (BYTES, JSON)."""
        if isinstance(payload, InferRequest):
            return await self._predict_v2(payload)
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise InvalidInput('v1 predict expects {"instances": [patient record, ...]}')
        preds = await self._predict_many(payload["instances"], "instances")
        return {"predictions": [p.model_dump() for p in preds]}

    async def _predict_v2(self, request: InferRequest) -> InferResponse:
        inp = request.get_input_by_name("patient")
        if inp is None or inp.datatype != "BYTES":
            raise InvalidInput('v2 predict expects a BYTES input named "patient" holding patient JSON strings')
        texts = [s.decode("utf-8") if isinstance(s, bytes) else s for s in _flat(inp.data)]
        preds = await self._predict_many([_json(s, i) for i, s in enumerate(texts)], "inputs[patient]")
        probs = [-1.0 if p.probability is None else p.probability for p in preds]
        return InferResponse(request.id or uuid.uuid4().hex, self.name, [
            InferOutput("probability", [len(preds)], "FP64", probs),
            InferOutput("prediction", [len(preds)], "BYTES", [p.model_dump_json() for p in preds]),
        ])

    async def _predict_many(self, items: list, where: str) -> list[ClinicalPrediction]:
        if not items:
            raise InvalidInput(f"{where}: at least one patient record is needed")
        patients = []
        for i, item in enumerate(items):
            try:
                patients.append(PatientIn.model_validate(item))
            except ValidationError as exc:
                raise InvalidInput(f"{where}[{i}]: {validation_message(exc)}") from None
        try:
            return list(await asyncio.gather(*(self.clinical(p) for p in patients)))
        except DataError as exc:
            raise InvalidInput(f"{where}: {exc}") from None
        except asyncio.TimeoutError:
            from fastapi import HTTPException

            raise HTTPException(504, f"no answer within {self.serve_cfg.request_timeout_s:g} s") from None


def _flat(data) -> list:
    out = []
    for x in data if isinstance(data, (list, tuple)) else [data]:
        out.extend(_flat(x) if isinstance(x, (list, tuple)) else [x])
    return out


def _json(text, i: int):
    if isinstance(text, dict):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"inputs[patient][{i}] is not valid JSON (line {exc.lineno}, column {exc.colno})") from None


class TransformersModel(EagrlModel):
    """Any causal LM through the batched transformers backend (CPU or GPU)."""

    backend_name = "transformers"

    def build_backend(self) -> GenerationBackend:
        return make_backend(self.model_cfg, self.gen_cfg.model_copy(update={"backend": "transformers"}))


class VLLMModel(EagrlModel):
    """The vLLM engine (the ``gpu`` extra) with prefix caching."""

    backend_name = "vllm"

    def build_backend(self) -> GenerationBackend:
        return make_backend(self.model_cfg, self.gen_cfg.model_copy(update={"backend": "vllm"}))


def choose_backend(requested: str) -> str:
    """``auto`` -> vllm when it is importable and CUDA is available, else transformers."""
    if requested != "auto":
        return requested
    import importlib.util

    import torch

    return "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "transformers"


def make_model(serve_cfg: ServeConfig, model_cfg: ModelConfig, gen_cfg: GenerationConfig,
               features: Sequence[FeatureSpec]) -> EagrlModel:
    cls = {"transformers": TransformersModel, "vllm": VLLMModel}[choose_backend(serve_cfg.backend)]
    return cls(serve_cfg, model_cfg, gen_cfg, features)
