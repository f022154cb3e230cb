"""OpenAI-compatible completions and chat routes, at the paths KServe's Hugging Face runtime uses.

``POST /openai/v1/completions``, ``POST /openai/v1/chat/completions``, ``GET /openai/v1/models``; the official
``openai`` client works with ``base_url=http://host:port/openai/v1``. Written here because KServe 0.21's own
OpenAI routes and types import vLLM, so they do not exist on the CPU path; the responses are the ``openai``
package's own pydantic types, so clients parse exactly what they expect. Generation goes through the served
model's batcher. No streaming (a request with ``stream: true`` gets 400).
"""
from __future__ import annotations

import time
import uuid
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from openai.types import Completion, CompletionChoice, CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from pydantic import BaseModel, ConfigDict, Field

from eagrl.llm.backends import SamplingParams

PREFIX = "/openai/v1"
FINISH = {"stop": "stop", "eos": "stop", "length": "length"}


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send optional fields this server does not use

    model: str = Field(description="The served model's name.")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False


class CompletionBody(_Sampling):
    prompt: str | list[str] = Field(description="One prompt or a list of prompts.")


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatBody(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_response(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": str(status)}},
                        status_code=status)


def register_openai_routes(app, model) -> None:
    """Mount the routes for one :class:`~eagrl.serve.model.EagrlModel`."""
    from eagrl.serve.model import TextRequest

    cfg = model.serve_cfg
    router = APIRouter(prefix=PREFIX, tags=["OpenAI"])

    def check(body: _Sampling, max_tokens: int | None):
        if body.model != model.name:
            raise OpenAIError(404, f"model {body.model!r} is not served here; this server serves {model.name!r}",
                              "model", "not_found_error")
        if body.stream:
            raise OpenAIError(400, "streaming is not supported by this server; send stream=false", "stream")
        if body.n > cfg.max_n:
            raise OpenAIError(400, f"n={body.n} is above this server's limit of {cfg.max_n}", "n")
        wanted = max_tokens or 16
        if wanted > cfg.max_tokens:
            raise OpenAIError(400, f"max_tokens={wanted} is above this server's limit of {cfg.max_tokens}",
                              "max_tokens")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        return SamplingParams(max_tokens=wanted, temperature=body.temperature, top_p=body.top_p, stop=stop)

    def tokens(text: str, param: str) -> tuple[int, ...]:
        ids = tuple(model.backend.encode(text))
        if not ids:
            raise OpenAIError(400, f"{param} is empty", param)
        if len(ids) > cfg.max_prompt_tokens:
            raise OpenAIError(400, f"{param} has {len(ids)} tokens, above this server's limit of "
                              f"{cfg.max_prompt_tokens}", param)
        return ids

    async def run(ids: tuple[int, ...], params: SamplingParams, body: _Sampling):
        seed = body.seed if body.seed is not None else model.gen_cfg.seed
        return await model.complete(TextRequest(ids, params, body.n, seed))

    @router.post("/completions", response_model=Completion)
    async def completions(body: CompletionBody, request: Request):
        params = check(body, body.max_tokens)
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise OpenAIError(400, "prompt is an empty list", "prompt")
        ids = [tokens(p, f"prompt[{i}]" if len(prompts) > 1 else "prompt") for i, p in enumerate(prompts)]
        import asyncio

        groups = await asyncio.gather(*(run(i, params, body) for i in ids))
        choices, used = [], 0
        for group in groups:
            for s in group:
                choices.append(CompletionChoice(index=len(choices), text=s.text, logprobs=None,
                                                finish_reason=FINISH.get(s.finish_reason, "stop")))
                used += len(s.token_ids)
        n_prompt = sum(len(i) for i in ids)
        return Completion(id=f"cmpl-{uuid.uuid4().hex}", object="text_completion", created=int(time.time()),
                          model=model.name, choices=choices,
                          usage=CompletionUsage(prompt_tokens=n_prompt, completion_tokens=used,
                                                total_tokens=n_prompt + used))

    @router.post("/chat/completions", response_model=ChatCompletion)
    async def chat(body: ChatBody, request: Request):
        params = check(body, body.max_completion_tokens or body.max_tokens)
        messages = [m.model_dump() for m in body.messages]
        tok = model.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        ids = tokens(text, "messages")
        group = await run(ids, params, body)
        choices = [Choice(index=j, logprobs=None, finish_reason=FINISH.get(s.finish_reason, "stop"),
                          message=ChatCompletionMessage(role="assistant", content=s.text))
                   for j, s in enumerate(group)]
        used = sum(len(s.token_ids) for s in group)
        return ChatCompletion(id=f"chatcmpl-{uuid.uuid4().hex}", object="chat.completion", created=int(time.time()),
                              model=model.name, choices=choices,
                              usage=CompletionUsage(prompt_tokens=len(ids), completion_tokens=used,
                                                    total_tokens=len(ids) + used))

    @router.get("/models")
    async def models():
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": 0,
                                            "owned_by": "eagrl"}]}

    async def on_error(request: Request, exc: OpenAIError):
        return error_response(exc.status, exc.message, exc.param, exc.kind)

    app.include_router(router)
    app.add_exception_handler(OpenAIError, on_error)
