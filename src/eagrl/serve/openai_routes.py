"""OpenAI-compatible completions and chat routes, at the paths KServe's Hugging Face runtime uses.

``POST /openai/v1/completions``, ``POST /openai/v1/chat/completions``, ``GET /openai/v1/models``; the official
``openai`` client works with ``base_url=http://host:port/openai/v1``. Written here because KServe 0.21's own
OpenAI routes and types import vLLM, so they do not exist on the CPU path; the responses are the ``openai``
package's own pydantic types, so clients parse exactly what they expect. Generation goes through the served
model's batcher.

What a request may ask for:

* ``n`` (up to ``serve.max_n``) answers per prompt and ``stop`` strings (up to 4; the text ends before the first
  one, ``finish_reason`` "stop") are decoded by the backend;
* ``stream: true`` answers as server-sent events (``data: <chunk JSON>`` lines, then ``data: [DONE]``): one
  chunk per generated token with its text, then one with the ``finish_reason`` (chat: a first chunk with the
  role); ``stream_options.include_usage`` adds a last chunk with the token counts. The backend decodes a
  batch whole, so the chunks of an answer are sent when it is complete: the client sees the protocol, not an
  earlier first token;
* ``logprobs`` (completions: an integer; chat: ``true``) returns the log-probability of each generated token
  under the model's own distribution (temperature 1, before top-p), the backend's ``Sample.logprobs``. The
  backends keep no alternatives, so a request for top alternatives (completions ``logprobs`` > 0, chat
  ``top_logprobs`` > 0) gets 400 rather than a silently shorter answer.

Errors are found before an answer starts, so a streamed request that is invalid gets the same JSON 4xx body as
an unstreamed one.
"""
from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from openai.types import Completion, CompletionChoice, CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.chat.chat_completion_token_logprob import ChatCompletionTokenLogprob
from openai.types.completion_choice import Logprobs
from pydantic import BaseModel, ConfigDict, Field

from eagrl.llm.backends import Sample, SamplingParams

PREFIX = "/openai/v1"
FINISH = {"stop": "stop", "eos": "stop", "length": "length"}
MAX_STOP = 4  # stop strings per request, as OpenAI's API allows


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


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
    stream_options: StreamOptions | None = None


class CompletionBody(_Sampling):
    prompt: str | list[str] = Field(description="One prompt or a list of prompts.")
    logprobs: int | None = Field(
        None, ge=0, le=5, description="Log-probs of the generated tokens (0: no alternatives)."
    )


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatBody(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_response(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": str(status)}},
                        status_code=status)


# ====================================================================== a sample's tokens as text pieces
def token_pieces(decode, sample: Sample) -> list[tuple[str, float, int]]:
    """(text piece, log-prob, offset in ``sample.text``) of each generated token that shows in the text.

    ``decode(ids) -> str`` decodes a prefix of ``sample.token_ids``; a token's piece is what it adds to the
    decoded prefix, cut to ``sample.text`` (which ends before a stop string and leaves the EOS token out), so the
    pieces join to exactly ``sample.text``. Tokens past the end of the text (EOS, the rest of a stop string)
    are left out; a token that completes a multi-byte character carries that character.
    """
    text, out, shown = sample.text, [], 0
    for k in range(1, len(sample.token_ids) + 1):
        if shown >= len(text):
            break
        prefix = decode(sample.token_ids[:k])
        agree = len(os.path.commonprefix([prefix, text]))
        out.append((text[shown:agree], float(sample.logprobs[k - 1]), shown))
        shown = max(shown, agree)
    if out and shown < len(text):  # whatever the prefixes never matched belongs to the last token
        piece, lp, offset = out[-1]
        out[-1] = (piece + text[shown:], lp, offset)
    return out


def sse(chunks: Iterator[BaseModel]) -> Iterator[str]:
    for chunk in chunks:
        yield f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"
    yield "data: [DONE]\n\n"


def register_openai_routes(app, model) -> None:
    """Mount the routes for one :class:`~eagrl.serve.model.EagrlModel`."""
    from eagrl.serve.model import TextRequest

    cfg = model.serve_cfg
    router = APIRouter(prefix=PREFIX, tags=["OpenAI"])

    def text_after(prompt_ids: Sequence[int]):
        """ids -> the text they add after the prompt, decoded with its last tokens as the backends decode
        (a leading-space tokenizer writes a first token's space only after a context)."""
        tail = [int(t) for t in prompt_ids[-4:]]
        tail_text = model.backend.decode(tail)

        def decode(ids: Sequence[int]) -> str:
            full = model.backend.decode(tail + [int(t) for t in ids])
            return full[len(tail_text):] if full.startswith(tail_text) else model.backend.decode(ids)
        return decode

    def check(body: _Sampling, max_tokens: int | None):
        if body.model != model.name:
            raise OpenAIError(404, f"model {body.model!r} is not served here; this server serves {model.name!r}",
                              "model", "not_found_error")
        if body.n > cfg.max_n:
            raise OpenAIError(400, f"n={body.n} is above this server's limit of {cfg.max_n}", "n")
        if body.stream_options is not None and not body.stream:
            raise OpenAIError(400, "stream_options is only allowed with stream=true", "stream_options")
        wanted = max_tokens or 16
        if wanted > cfg.max_tokens:
            raise OpenAIError(400, f"max_tokens={wanted} is above this server's limit of {cfg.max_tokens}",
                              "max_tokens")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        if len(stop) > MAX_STOP:
            raise OpenAIError(400, f"stop has {len(stop)} strings, at most {MAX_STOP} are allowed", "stop")
        if any(not s for s in stop):
            raise OpenAIError(400, "stop strings must not be empty", "stop")
        return SamplingParams(max_tokens=wanted, temperature=body.temperature, top_p=body.top_p, stop=stop)

    def tokens(text: str, param: str) -> tuple[int, ...]:
        ids = tuple(model.backend.encode(text))
        if not ids:
            raise OpenAIError(400, f"{param} is empty", param)
        if len(ids) > cfg.max_prompt_tokens:
            raise OpenAIError(400, f"{param} has {len(ids)} tokens, above this server's limit of "
                              f"{cfg.max_prompt_tokens}", param)
        return ids

    async def run(ids: tuple[int, ...], params: SamplingParams, body: _Sampling) -> list[Sample]:
        seed = body.seed if body.seed is not None else model.gen_cfg.seed
        return await model.complete(TextRequest(ids, params, body.n, seed))

    def usage(n_prompt: int, samples: Sequence[Sample]) -> CompletionUsage:
        used = sum(len(s.token_ids) for s in samples)
        return CompletionUsage(prompt_tokens=n_prompt, completion_tokens=used, total_tokens=n_prompt + used)

    def include_usage(body: _Sampling) -> bool:
        return bool(body.stream_options and body.stream_options.include_usage)

    def stream(chunks: Iterator[BaseModel]) -> StreamingResponse:
        return StreamingResponse(sse(chunks), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ completions
    def completion_logprobs(decode, sample: Sample) -> Logprobs:
        pieces = token_pieces(decode, sample)
        return Logprobs(tokens=[p for p, _, _ in pieces], token_logprobs=[lp for _, lp, _ in pieces],
                        text_offset=[o for _, _, o in pieces], top_logprobs=None)

    @router.post("/completions", response_model=Completion)
    async def completions(body: CompletionBody, request: Request):
        params = check(body, body.max_tokens)
        if body.logprobs:
            raise OpenAIError(400, f"logprobs={body.logprobs}: this server returns the log-prob of each generated "
                              "token but no alternatives; send logprobs=0", "logprobs")
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise OpenAIError(400, "prompt is an empty list", "prompt")
        ids = [tokens(p, f"prompt[{i}]" if len(prompts) > 1 else "prompt") for i, p in enumerate(prompts)]
        groups = await asyncio.gather(*(run(i, params, body) for i in ids))
        # choice index: prompt-major, as OpenAI numbers them; each answer decoded after its own prompt
        samples = [s for group in groups for s in group]
        decoders = [text_after(i) for i, group in zip(ids, groups) for _ in group]
        n_prompt = sum(len(i) for i in ids)
        meta = dict(id=f"cmpl-{uuid.uuid4().hex}", object="text_completion", created=int(time.time()),
                    model=model.name)
        want_lp = body.logprobs is not None
        if not body.stream:
            choices = [CompletionChoice(index=j, text=s.text, finish_reason=FINISH.get(s.finish_reason, "stop"),
                                        logprobs=completion_logprobs(decoders[j], s) if want_lp else None)
                       for j, s in enumerate(samples)]
            return Completion(**meta, choices=choices, usage=usage(n_prompt, samples))

        def chunks():
            for j, s in enumerate(samples):
                for piece, lp, offset in token_pieces(decoders[j], s):
                    lps = Logprobs(tokens=[piece], token_logprobs=[lp], text_offset=[offset]) if want_lp else None
                    # finish_reason null until the last chunk, as OpenAI streams (the type allows no null)
                    yield Completion(**meta, choices=[CompletionChoice.model_construct(
                        index=j, text=piece, logprobs=lps, finish_reason=None)])
                yield Completion(**meta, choices=[CompletionChoice(
                    index=j, text="", finish_reason=FINISH.get(s.finish_reason, "stop"))])
            if include_usage(body):
                yield Completion(**meta, choices=[], usage=usage(n_prompt, samples))

        return stream(chunks())

    # ------------------------------------------------------------------ chat
    def chat_logprobs(pieces: Sequence[tuple[str, float, int]]) -> ChoiceLogprobs:
        return ChoiceLogprobs(content=[ChatCompletionTokenLogprob(token=p, logprob=lp, bytes=list(p.encode()),
                                                                  top_logprobs=[]) for p, lp, _ in pieces])

    @router.post("/chat/completions", response_model=ChatCompletion)
    async def chat(body: ChatBody, request: Request):
        params = check(body, body.max_completion_tokens or body.max_tokens)
        if body.top_logprobs:
            raise OpenAIError(400, f"top_logprobs={body.top_logprobs}: this server returns the log-prob of each "
                              "generated token but no alternatives; send top_logprobs=0 or leave it out",
                              "top_logprobs")
        if body.top_logprobs is not None and not body.logprobs:
            raise OpenAIError(400, "top_logprobs needs logprobs=true", "top_logprobs")
        messages = [m.model_dump() for m in body.messages]
        tok = model.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        ids = tokens(text, "messages")
        group = await run(ids, params, body)
        decode = text_after(ids)
        meta = dict(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=model.name)
        if not body.stream:
            choices = [Choice(index=j, finish_reason=FINISH.get(s.finish_reason, "stop"),
                              logprobs=chat_logprobs(token_pieces(decode, s)) if body.logprobs else None,
                              message=ChatCompletionMessage(role="assistant", content=s.text))
                       for j, s in enumerate(group)]
            return ChatCompletion(**meta, object="chat.completion", choices=choices, usage=usage(len(ids), group))

        def chunks():
            def chunk(**choice) -> ChatCompletionChunk:
                return ChatCompletionChunk(**meta, object="chat.completion.chunk", choices=[ChunkChoice(**choice)])

            for j, s in enumerate(group):
                yield chunk(index=j, delta=ChoiceDelta(role="assistant", content=""), finish_reason=None)
                for piece in token_pieces(decode, s):
                    yield chunk(index=j, delta=ChoiceDelta(content=piece[0]), finish_reason=None,
                                logprobs=chat_logprobs([piece]) if body.logprobs else None)
                yield chunk(index=j, delta=ChoiceDelta(), finish_reason=FINISH.get(s.finish_reason, "stop"))
            if include_usage(body):
                yield ChatCompletionChunk(**meta, object="chat.completion.chunk", choices=[],
                                          usage=usage(len(ids), group))

        return stream(chunks())

    @router.get("/models")
    async def models():
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": 0,
                                            "owned_by": "eagrl"}]}

    async def on_error(request: Request, exc: OpenAIError):
        return error_response(exc.status, exc.message, exc.param, exc.kind)

    app.include_router(router)
    app.add_exception_handler(OpenAIError, on_error)
