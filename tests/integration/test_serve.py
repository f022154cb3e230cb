"""`eagrl serve`: the patient schema, request batching, and a real server (tiny model) over HTTP."""
from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import json
import math
import shutil
import subprocess
import time

import httpx
import numpy as np
import openai
import pytest
import torch
from pydantic import ValidationError
from support.llm import tjh_cohort

from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.config.serve import ServeConfig
from eagrl.errors import DataError
from eagrl.llm.loading import attach_lora, build_tiny
from eagrl.llm.prompt import build_prompt
from eagrl.serve.batching import Batcher
from eagrl.serve.process import running_server
from eagrl.serve.schema import PatientIn, record_to_json, to_record
from eagrl.serve.server import build_model, resolve_policy

KEY = "test-key-7f3a"
SECRET_ID = "PATIENT-SECRET-93127"
NAME = "eagrl-policy"


# ====================================================================== schema
def test_patient_json_gives_the_training_prompt_exactly():
    cohort = tjh_cohort()
    tok = build_tiny()[1]
    cfg = GenerationConfig(max_prompt_tokens=1024, compact=True)
    for sid in cohort.split_ids("test")[:5]:
        record = cohort.patient(sid)
        body = json.loads(json.dumps(record_to_json(record)))  # through the wire format
        served = to_record(PatientIn.model_validate(body), cohort.features)
        a = build_prompt(record, cohort.features, dataset="tjh", task="mortality", cfg=cfg, tokenizer=tok)
        b = build_prompt(served, cohort.features, dataset="tjh", task="mortality", cfg=cfg, tokenizer=tok)
        assert b.text == a.text and b.features_shown == a.features_shown


def test_patient_json_takes_aliases_and_rejects_what_it_cannot_read():
    features = tjh_cohort().features
    body = {"sex": "female", "age": 70, "visits": [{"time": "2020-02-01", "values": {"Hb": 120, "hemoglobin": None}},
                                                  {"time": "2020-02-02T06:00", "values": {"LDH": 400}}]}
    record = to_record(PatientIn.model_validate(body), features)
    assert record.values["hemoglobin"][0] == 120 and math.isnan(record.values["hemoglobin"][1])
    assert record.sex == 0.0 and record.age == 70 and len(record.visit_times) == 2
    with pytest.raises(DataError, match="unknown feature name.*'bogus'"):
        to_record(PatientIn.model_validate({"visits": [{"time": "2020-01-01", "values": {"bogus": 1}}]}), features)
    with pytest.raises(DataError, match="3 visits, at most 2"):
        to_record(PatientIn.model_validate({"visits": [{"time": f"2020-01-0{i}"} for i in (1, 2, 3)]}), features,
                  max_visits=2)
    with pytest.raises(ValidationError, match="time order"):
        PatientIn.model_validate({"visits": [{"time": "2020-01-02"}, {"time": "2020-01-01"}]})
    with pytest.raises(ValidationError, match="visits"):
        PatientIn.model_validate({"age": 50})
    with pytest.raises(ValidationError, match="finite"):
        PatientIn.model_validate({"visits": [{"time": "2020-01-01", "values": {"Hb": float("inf")}}]})


# ====================================================================== what is served
def test_a_registered_policy_folder_serves_its_base_with_its_adapter(tmp_path):
    base, _ = build_tiny()
    lora_cfg = ModelConfig(source="tiny", lora_r=4, lora_target_modules=["q_proj", "v_proj"])
    tuned = attach_lora(copy.deepcopy(base), lora_cfg)
    with torch.no_grad():
        for n, p in tuned.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    art = tmp_path / "policy" / "artifacts"  # the layout of an eagrl pyfunc policy in MLflow
    tuned.save_pretrained(art / "adapter")
    (art / "policy.json").write_text(json.dumps({"model": lora_cfg.model_dump(mode="json", exclude={"adapter"}),
                                                 "generation": {}}))
    resolved = resolve_policy(ModelConfig(source=str(tmp_path / "policy")))
    assert resolved.source == "tiny" and resolved.adapter == str(art / "adapter") and resolved.lora_r == 4
    gen = GenerationConfig(depth=1, max_subquestion_tokens=3, max_answer_tokens=3, max_features_tokens=3,
                           temperature=0, compact=True, max_prompt_tokens=1024, cpu_threads=1)
    served = build_model(ServeConfig(), ModelConfig(source=str(tmp_path / "policy")), gen)
    plain = build_model(ServeConfig(), ModelConfig(source="tiny"), gen)
    assert served.backend_name == "transformers"
    ids = served.backend.encode("The patient has")
    cands = list(range(10))
    assert not np.allclose(served.backend.next_token_logprobs([ids], cands),
                           plain.backend.next_token_logprobs([ids], cands), atol=1e-3)
    pred = asyncio.run(served.clinical(PatientIn.model_validate(_patient(0))))
    assert pred.well_formed and 0 <= pred.probability <= 1 and len(pred.steps) == 1


# ====================================================================== batching
def test_batcher_groups_concurrent_requests_and_keeps_each_answer_its_own():
    sizes = []

    def fn(items):
        sizes.append(len(items))
        time.sleep(0.05)
        return [ValueError(f"bad {x}") if x == 3 else x * 10 for x in items]

    async def main(batch):
        b = Batcher(fn, concurrent.futures.ThreadPoolExecutor(1), max_batch_size=batch, max_wait_ms=20)
        return await asyncio.gather(*(b.submit(i) for i in range(12)), return_exceptions=True)

    out = asyncio.run(main(8))
    assert [o for i, o in enumerate(out) if i != 3] == [i * 10 for i in range(12) if i != 3]
    assert isinstance(out[3], ValueError) and "bad 3" in str(out[3])
    assert max(sizes) > 1 and sum(sizes) == 12 and len(sizes) < 12
    sizes.clear()
    asyncio.run(main(1))
    assert sizes == [1] * 12


def test_batcher_times_out_and_skips_the_abandoned_request():
    ran = []

    def fn(items):
        ran.extend(items)
        time.sleep(0.3)
        return items

    async def main():
        b = Batcher(fn, concurrent.futures.ThreadPoolExecutor(1), max_batch_size=1, max_wait_ms=0)
        first = asyncio.ensure_future(b.submit("a"))
        await asyncio.sleep(0.01)
        with pytest.raises(asyncio.TimeoutError):
            await b.submit("b", timeout=0.05)
        return await first

    assert asyncio.run(main()) == "a"
    assert ran == ["a"]


# ====================================================================== a real server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server("--model", "tiny", "--profile", "smoke", "--dataset", "tjh", "--task", "mortality",
                        "--max-body-bytes", "200000", "--max-batch-size", "8", "--max-wait-ms", "50",
                        log_path=log, env={"EAGRL_API_KEY": KEY}) as url:
        yield url, log


def _auth():
    return {"Authorization": f"Bearer {KEY}"}


def _patient(i: int = 0) -> dict:
    cohort = tjh_cohort()
    return record_to_json(cohort.patient(cohort.split_ids("test")[i]))


def test_health_is_open_and_everything_else_needs_the_key(server):
    url, _ = server
    for path in ("/v2/health/live", "/v2/health/ready", f"/v1/models/{NAME}", f"/v2/models/{NAME}/ready"):
        assert httpx.get(url + path).status_code == 200, path
    r = httpx.post(f"{url}/clinical/v1/predict", json=_patient())
    assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/openai/v1/completions", json={"model": NAME, "prompt": "x"},
                   headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/openai/v1", api_key="wrong").models.list()


def test_openai_client_and_curl_get_answers(server):
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/openai/v1", api_key=KEY)
    assert [m.id for m in client.models.list()] == [NAME]
    c = client.completions.create(model=NAME, prompt=["The patient", "Lactate"], max_tokens=6, temperature=0)
    assert len(c.choices) == 2 and all(ch.text for ch in c.choices)
    assert c.usage.completion_tokens == 12 and c.choices[0].finish_reason == "length"
    again = client.completions.create(model=NAME, prompt="The patient", max_tokens=6, temperature=0)
    assert again.choices[0].text == c.choices[0].text  # greedy: the same answer alone as in a batch of two
    chat = client.chat.completions.create(model=NAME, messages=[{"role": "system", "content": "You are a doctor."},
                                                                {"role": "user", "content": "Risk?"}],
                                          max_tokens=5, n=2, seed=3)
    assert len(chat.choices) == 2 and chat.choices[0].message.role == "assistant"
    assert all(ch.message.content for ch in chat.choices)
    curl = shutil.which("curl")
    assert curl, "curl is needed for this check"
    out = subprocess.run([curl, "-s", "-H", "Content-Type: application/json", "-H", f"X-API-Key: {KEY}",
                          "-d", json.dumps({"model": NAME, "prompt": "hemoglobin", "max_tokens": 4}),
                          f"{url}/openai/v1/completions"], capture_output=True, text=True, timeout=60)
    body = json.loads(out.stdout)
    assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] == 4


def test_openai_client_streams_the_chunks_of_one_answer(server):
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/openai/v1", api_key=KEY)
    whole = client.completions.create(model=NAME, prompt="The patient", max_tokens=8, temperature=0)
    chunks = list(client.completions.create(model=NAME, prompt="The patient", max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len([t for t in texts if t]) > 1, texts  # token by token, not one piece
    assert "".join(texts) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    messages = [{"role": "user", "content": "Risk of death?"}]
    whole = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content or "" for c in chunks]
    assert len([d for d in deltas if d]) > 1 and "".join(deltas) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert len({c.id for c in chunks}) == 1
    many = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=4, n=2, seed=5,
                                               stream=True))
    alone = client.chat.completions.create(model=NAME, messages=messages, max_tokens=4, n=2, seed=5)
    for j in (0, 1):  # n answers stream each under its own index
        text = "".join(c.choices[0].delta.content or "" for c in many if c.choices[0].index == j)
        assert text == alone.choices[j].message.content


def test_openai_logprobs_are_the_models_own_and_n_and_stop_are_honoured(server):
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/openai/v1", api_key=KEY)
    c = client.completions.create(model=NAME, prompt="The patient", max_tokens=6, temperature=0, logprobs=0)
    lp = c.choices[0].logprobs
    assert "".join(lp.tokens) == c.choices[0].text and len(lp.token_logprobs) == len(lp.tokens) == 6
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    model, tok = build_tiny()  # the served model, read directly: greedy steps and their log-softmax
    ids = tok("The patient", add_special_tokens=False)["input_ids"]
    expected = []
    with torch.no_grad():
        for _ in range(6):
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
            ids.append(int(logp.argmax()))
            expected.append(float(logp.max()))
    assert lp.token_logprobs == pytest.approx(expected, abs=1e-3)
    chat = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Risk?"}],
                                          max_tokens=5, temperature=0, logprobs=True)
    content = chat.choices[0].logprobs.content
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    assert all(t.logprob <= 0 and bytes(t.bytes).decode() == t.token for t in content)
    plain = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Risk?"}],
                                           max_tokens=5, temperature=0)
    assert plain.choices[0].logprobs is None  # only when asked
    three = client.completions.create(model=NAME, prompt="The patient", max_tokens=6, n=3, seed=11)
    assert len(three.choices) == 3 and len({ch.text for ch in three.choices}) > 1  # sampled, each its own
    text = c.choices[0].text
    stop = text[2:4]  # a stop string inside the greedy answer: the answer ends before its first occurrence
    cut = client.completions.create(model=NAME, prompt="The patient", max_tokens=6, temperature=0, stop=[stop, "zzz"])
    assert cut.choices[0].text == text[:text.index(stop)] and cut.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError, match="no alternatives"):
        client.completions.create(model=NAME, prompt="a", max_tokens=2, logprobs=2)


def test_clinical_route_answers_a_tjh_patient(server):
    url, _ = server
    r = httpx.post(f"{url}/clinical/v1/predict", json=_patient(0), headers=_auth(), timeout=60)
    assert r.status_code == 200, r.text
    p = r.json()
    assert 0.0 <= p["probability"] <= 1.0 and p["well_formed"] is True
    assert 1 <= len(p["steps"]) <= 2 and set(p["steps"][0]) == {"subquestion", "answer"}
    assert p["patient_id"] == _patient(0)["patient_id"] and p["task"] == "mortality" and p["prompt_tokens"] > 100
    names = {f["name"] for f in httpx.get(f"{url}/clinical/v1/features", headers=_auth()).json()["features"]}
    assert set(p["important_features"]) <= names and "hemoglobin" in names


def test_kserve_v1_and_v2_predict_take_patient_records(server):
    url, _ = server
    one, two = _patient(0), _patient(1)
    r = httpx.post(f"{url}/v1/models/{NAME}:predict", json={"instances": [one, two]}, headers=_auth(), timeout=60)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["patient_id"] for p in preds] == [one["patient_id"], two["patient_id"]]
    v2 = {"inputs": [{"name": "patient", "datatype": "BYTES", "shape": [1], "data": [json.dumps(two)]}]}
    r = httpx.post(f"{url}/v2/models/{NAME}/infer", json=v2, headers=_auth(), timeout=60)
    assert r.status_code == 200, r.text
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert outs["probability"]["data"][0] == pytest.approx(preds[1]["probability"], abs=1e-6)
    assert json.loads(outs["prediction"]["data"][0])["well_formed"] is True


def test_concurrent_requests_are_batched_and_answer_as_alone(server):
    url, log = server
    bodies = [_patient(i) for i in range(6)]
    alone = [httpx.post(f"{url}/clinical/v1/predict", json=b, headers=_auth(), timeout=60).json() for b in bodies]

    async def together():
        async with httpx.AsyncClient(headers=_auth(), timeout=120) as c:
            return await asyncio.gather(*(c.post(f"{url}/clinical/v1/predict", json=b) for b in bodies))

    batched = [r.json() for r in asyncio.run(together())]
    for a, b in zip(alone, batched):
        assert b["probability"] == pytest.approx(a["probability"], abs=1e-3)
        assert b["patient_id"] == a["patient_id"]
    sizes = [int(line.split("clinical batch of ")[1].split()[0]) for line in log.read_text().splitlines()
             if "clinical batch of " in line]
    assert max(sizes) > 1, sizes


def test_bad_requests_get_clear_4xx_and_the_server_keeps_serving(server):
    url, _ = server
    h = {**_auth(), "Content-Type": "application/json"}
    cases = [
        (httpx.post(f"{url}/clinical/v1/predict", content=b'{"visits": [', headers=h), 422, "not valid JSON"),
        (httpx.post(f"{url}/clinical/v1/predict", json={"age": 40}, headers=h), 422, "visits: Field required"),
        (httpx.post(f"{url}/clinical/v1/predict", json={"visits": [{"time": "2020-01-01", "values": {"zz": 1}}]},
                    headers=h), 422, "unknown feature name(s) ['zz']"),
        (httpx.post(f"{url}/clinical/v1/predict", json={"visits": [{"time": "x"}]}, headers=h), 422, "visits.0.time"),
        (httpx.post(f"{url}/clinical/v1/predict", content=b"{" + b" " * 300_000 + b"}", headers=h), 413,
         "above the limit of 200000 bytes"),
        (httpx.post(f"{url}/v1/models/{NAME}:predict", json={"instances": [{"age": 3}]}, headers=h), 400,
         "instances[0]: visits: Field required"),
        (httpx.post(f"{url}/v1/models/{NAME}:predict", content=b"{oops", headers=h), 400, "Unrecognized request"),
        (httpx.post(f"{url}/openai/v1/completions", json={"model": "other", "prompt": "a"}, headers=h), 404,
         "is not served here"),
        (httpx.post(f"{url}/openai/v1/completions", json={"model": NAME}, headers=h), 422, "prompt: Field required"),
        (httpx.post(f"{url}/openai/v1/completions", json={"model": NAME, "prompt": "a", "stream": True,
                                                           "logprobs": 3}, headers=h), 400, "no alternatives"),
        (httpx.post(f"{url}/openai/v1/chat/completions", json={"model": NAME, "logprobs": True, "top_logprobs": 2,
                                                                "messages": [{"role": "user", "content": "a"}]},
                    headers=h), 400, "top_logprobs=2"),
        (httpx.post(f"{url}/openai/v1/completions", json={"model": NAME, "prompt": "a", "stop": list("abcde")},
                    headers=h), 400, "stop has 5 strings"),
        (httpx.post(f"{url}/openai/v1/completions", json={"model": NAME, "prompt": "a", "stream_options":
                                                           {"include_usage": True}}, headers=h), 400,
         "stream_options is only allowed with stream=true"),
        (httpx.post(f"{url}/openai/v1/completions", json={"model": NAME, "prompt": "a", "max_tokens": 10_000},
                    headers=h), 400, "above this server's limit of 512"),
        (httpx.post(f"{url}/openai/v1/completions", json={"model": NAME, "prompt": "word " * 5000}, headers=h), 400,
         "above this server's limit of 4096"),
    ]
    for r, status, text in cases:
        assert r.status_code == status, (status, r.text)
        assert text in r.text, (text, r.text)
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    assert httpx.post(f"{url}/clinical/v1/predict", json=_patient(2), headers=h, timeout=60).status_code == 200


def test_no_patient_data_in_the_logs(server):
    url, log = server
    body = _patient(3)
    body["patient_id"] = SECRET_ID
    body["age"] = 87.654321
    assert httpx.post(f"{url}/clinical/v1/predict", json=body, headers=_auth(), timeout=60).status_code == 200
    assert httpx.post(f"{url}/v1/models/{NAME}:predict", json={"instances": [body]}, headers=_auth(),
                      timeout=60).status_code == 200
    bad = {**body, "visits": [{"time": "2020-01-01", "values": {"hemoglobin": "SECRET-VALUE-55"}}]}
    r = httpx.post(f"{url}/clinical/v1/predict", json=bad, headers=_auth())
    assert r.status_code == 422 and "SECRET-VALUE-55" not in r.text
    r = httpx.post(f"{url}/v1/models/{NAME}:predict", json={"instances": [bad]}, headers=_auth())
    assert r.status_code == 400 and "SECRET-VALUE-55" not in r.text
    time.sleep(0.5)
    text = log.read_text()
    assert "clinical batch of" in text  # the log is being written
    for secret in (SECRET_ID, "87.654321", "SECRET-VALUE-55"):
        assert secret not in text


def test_slow_requests_get_504_and_no_key_means_open_routes(tmp_path):
    with running_server("--model", "tiny", "--profile", "smoke", "--timeout", "0.01", "--max-wait-ms", "0",
                        log_path=tmp_path / "server.log", env={"EAGRL_API_KEY": ""}) as url:
        r = httpx.post(f"{url}/clinical/v1/predict", json=_patient(0), timeout=60)  # no key configured: open
        assert r.status_code == 504 and "no answer within 0.01 s" in r.text
        r = httpx.post(f"{url}/openai/v1/completions", json={"model": NAME, "prompt": "a", "max_tokens": 64})
        assert r.status_code == 504
        r = httpx.post(f"{url}/v1/models/{NAME}:predict", json={"instances": [_patient(1)]}, timeout=60)
        assert r.status_code == 504
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200


# ====================================================================== must-show with a real model (slow)
@pytest.mark.slow
def test_smollm2_answers_openai_clients_curl_and_a_tjh_patient(tmp_path):
    log = tmp_path / "server.log"
    gen = ["--set", "generation.depth=2", "--set", "generation.max_subquestion_tokens=16",
           "--set", "generation.max_answer_tokens=16", "--set", "generation.max_features_tokens=16",
           "--set", "generation.compact=true", "--set", "generation.max_prompt_tokens=1024",
           "--set", "generation.temperature=0", "--set", "model.dtype=bfloat16", "--set", "generation.cpu_threads=1"]
    with running_server("--model", "smollm2-135m", "--profile", "default", *gen, log_path=log,
                        env={"EAGRL_API_KEY": KEY}) as url:
        client = openai.OpenAI(base_url=f"{url}/openai/v1", api_key=KEY)
        chat = client.chat.completions.create(
            model=NAME, max_tokens=24, temperature=0,
            messages=[{"role": "user", "content": "What does a high lactate level suggest in a sick patient?"}])
        assert len(chat.choices[0].message.content.split()) >= 3
        comp = client.completions.create(model=NAME, prompt="The normal range of serum sodium is", max_tokens=12)
        assert comp.choices[0].text.strip() and comp.usage.completion_tokens > 0
        out = subprocess.run(["curl", "-s", "-H", "Content-Type: application/json", "-H", f"X-API-Key: {KEY}", "-d",
                              json.dumps({"model": NAME, "messages": [{"role": "user", "content": "Hello"}],
                                          "max_tokens": 8}), f"{url}/openai/v1/chat/completions"],
                             capture_output=True, text=True, timeout=120)
        assert json.loads(out.stdout)["choices"][0]["message"]["content"]
        r = httpx.post(f"{url}/clinical/v1/predict", json=_patient(0), headers=_auth(), timeout=300)
        assert r.status_code == 200, r.text
        p = r.json()
        assert p["well_formed"] and 0 <= p["probability"] <= 1 and 1 <= len(p["steps"]) <= 2
        assert all(s["subquestion"].strip() for s in p["steps"])
        bad = httpx.post(f"{url}/clinical/v1/predict", content=b"{", headers={**_auth(), "Content-Type":
                                                                                "application/json"})
        assert bad.status_code == 422
        assert httpx.post(f"{url}/clinical/v1/predict", json=_patient(1), headers=_auth(),
                          timeout=300).status_code == 200
