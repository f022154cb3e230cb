"""The images, built and run: the pipeline in eagrl-pipeline (as `eagrl run` and through KFP's DockerRunner),
the model server in eagrl-serve-cpu. `make test-images` (marker `images`, also `slow`; not in `make test-slow`).

The module starts its own Docker engine with `.ci/docker up` (installing Debian's docker.io if needed; no
bridge, no iptables) and stops it at the end if it started it; `.ci/docker images` builds the images (cached
layers after the first build). Containers use `--network none`, or `--network host` where a client must reach
the server, so no traffic leaves 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from eagrl.config import PipelineConfig
from eagrl.serve.process import free_port
from pipelines.eagrl_pipeline import STAGES

pytestmark = [pytest.mark.images, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / ".ci" / "docker"
TAG = PipelineConfig().image.rsplit(":", 1)[1]
PIPELINE = f"eagrl-pipeline:{TAG}"
SERVE = f"eagrl-serve-cpu:{TAG}"
KEY = "image-test-key-51c2"
NAME = "eagrl-policy"
USER = 10001


def docker_cli() -> str:
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def docker(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([docker_cli(), *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, f"docker {' '.join(args[:3])} ...: {res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def engine():
    """A Docker engine answering on DOCKER_HOST with both images built; stopped afterwards if started here."""
    host = subprocess.run([str(CI), "env"], capture_output=True, text=True, check=True).stdout.strip().split("=", 1)[1]
    saved = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = host
    try:
        was_up = subprocess.run([docker_cli(), "version"], capture_output=True, timeout=30).returncode == 0
    except FileNotFoundError:  # no docker client yet: `.ci/docker up` installs it
        was_up = False
    try:
        up = subprocess.run([str(CI), "up"], capture_output=True, text=True, timeout=900)
        assert up.returncode == 0, up.stderr[-2000:]
        if os.environ.get("EAGRL_TEST_IMAGES_PREBUILT") != "1":  # 1: test the images as they are (iterating)
            t0 = time.time()
            built = subprocess.run([str(CI), "images"], capture_output=True, text=True, timeout=3600, cwd=ROOT)
            assert built.returncode == 0, built.stderr[-3000:]
            print(f"images ready in {time.time() - t0:.0f} s:\n{built.stdout}")
        yield host
    finally:
        if not was_up:
            subprocess.run([str(CI), "down"], capture_output=True, timeout=120)
        if saved is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = saved


def _owned_workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    os.chown(ws, USER, USER)  # the containers run as 10001 and write here
    return ws


def _mlflow_run(ws: Path, run_id: str):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}"), run_id


# ====================================================================== 1. `eagrl run` in the pipeline image
def test_smoke_pipeline_runs_in_the_pipeline_image_as_user_10001(engine, shared_data, tmp_path):
    ws = _owned_workspace(tmp_path)
    data = shared_data / "mimic-iv-demo-clif"
    res = docker("run", "--rm", "--network", "none", "--user", f"{USER}:{USER}",
                 "-v", f"{ws}:{ws}", "-v", f"{shared_data}:{shared_data}:ro",
                 PIPELINE, "run", "--profile", "smoke", "--data-path", str(data), "--workspace", str(ws),
                 "--out", str(ws / "out"), timeout=1500, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    summary = json.loads((ws / "out" / "summary.json").read_text())
    assert summary["status"] == "succeeded", summary["message"]
    assert [s["stage"] for s in summary["stages"]] == STAGES
    assert all(s["status"] == "succeeded" for s in summary["stages"])
    assert (ws / "out" / "summary.json").stat().st_uid == USER and (ws / "mlflow.db").stat().st_uid == USER
    client, run_id = _mlflow_run(ws, summary["mlflow_run_id"])
    assert res.stdout.strip().splitlines()[-1] == run_id
    parent = client.get_run(run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["eagrl.profile"] == "smoke"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert {c.data.tags["eagrl.stage"] for c in children} == set(STAGES)


# ====================================================================== 2. KFP's DockerRunner
def test_pipeline_components_run_in_the_image_through_kfps_docker_runner(engine, shared_data, tmp_path):
    ws = _owned_workspace(tmp_path)
    data = shared_data / "mimic-iv-demo-clif"
    env = {**os.environ, "DOCKER_HOST": engine}
    env.pop("MLFLOW_TRACKING_URI", None)
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "support" / "images_kfp_docker.py"), str(ws), str(data),
                          PipelineConfig().image], capture_output=True, text=True, timeout=1800, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["stages"] == {s: "succeeded" for s in STAGES}, res.stderr[-4000:]
    assert f"Found image '{PipelineConfig().image}'" in res.stdout + res.stderr  # the image, not a pull
    summary_of = {s: json.loads((ws / "out" / s / "status.json").read_text()) for s in STAGES}
    assert all(v["status"] == "succeeded" for v in summary_of.values())
    assert (ws / "out" / "prepare" / "status.json").stat().st_uid == USER  # written inside the container
    client, run_id = _mlflow_run(ws, result["mlflow_run_id"])
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert {c.data.tags["eagrl.stage"] for c in children} == set(STAGES)


# ====================================================================== 3. the serving image
@pytest.fixture(scope="module")
def served(engine, tmp_path_factory):
    """eagrl-serve-cpu with a read-only root filesystem, the API key set, a tiny model mounted at /mnt/models."""
    from eagrl.llm.loading import build_tiny

    model_dir = tmp_path_factory.mktemp("model")
    model, tok = build_tiny()
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    for p in [model_dir, *model_dir.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    port = free_port()
    name = f"eagrl-serve-test-{port}"
    docker("run", "-d", "--rm", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
           "-e", f"EAGRL_API_KEY={KEY}", "-v", f"{model_dir}:/mnt/models:ro", SERVE,
           "serve", "--host=127.0.0.1", f"--port={port}", "--model=/mnt/models", "--profile=smoke",
           "--dataset=tjh", "--task=mortality")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            state = docker("inspect", "-f", "{{.State.Running}}", name, check=False)
            assert state.returncode == 0 and state.stdout.strip() == "true", "the server container exited"
            assert time.time() < deadline, docker("logs", name, check=False).stderr[-3000:]
            time.sleep(1)
        yield url, name
    finally:
        docker("stop", "-t", "10", name, check=False)


def test_serving_image_answers_openai_clients_and_a_tjh_patient_read_only(served):
    from support.llm import tjh_cohort

    from eagrl.serve.schema import record_to_json

    url, name = served
    inspect = json.loads(docker("inspect", name).stdout)[0]
    assert inspect["HostConfig"]["ReadonlyRootfs"] is True and inspect["Config"]["User"] == "10001:10001"
    for path in ("/v2/health/live", "/v2/health/ready"):  # open without the key
        assert httpx.get(url + path, timeout=10).status_code == 200, path
    assert httpx.post(f"{url}/openai/v1/completions", json={"model": NAME, "prompt": "a"}).status_code == 401

    client = openai.OpenAI(base_url=f"{url}/openai/v1", api_key=KEY)
    chat = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Risk?"}],
                                          max_tokens=6, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    comp = client.completions.create(model=NAME, prompt="The patient", max_tokens=6, temperature=0)
    assert comp.choices[0].text and comp.usage.completion_tokens == 6
    chunks = list(client.completions.create(model=NAME, prompt="The patient", max_tokens=6, temperature=0,
                                            stream=True))
    pieces = [c.choices[0].text for c in chunks]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == comp.choices[0].text
    chat_chunks = list(client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Risk?"}],
                                                      max_tokens=6, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chat_chunks) == chat.choices[0].message.content

    cohort = tjh_cohort()
    patient = record_to_json(cohort.patient(cohort.split_ids("test")[0]))
    h = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(f"{url}/clinical/v1/predict", json=patient, headers=h, timeout=120)
    assert r.status_code == 200, r.text
    pred = r.json()
    assert pred["patient_id"] == patient["patient_id"] and pred["task"] == "mortality"
    assert pred["well_formed"] is True and 0.0 <= pred["probability"] <= 1.0 and pred["prompt_tokens"] > 100
    bad = httpx.post(f"{url}/clinical/v1/predict", json={"age": 40}, headers=h, timeout=30)
    assert bad.status_code == 422 and "visits: Field required" in bad.json()["error"]["message"]
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200  # still serving


# ====================================================================== 4. the compose stack
def _wait_http(url: str, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, f"{what} did not answer at {url} within {seconds:.0f} s"
        time.sleep(1)


def test_compose_stack_tracks_the_pipeline_and_keeps_its_runs_across_a_restart(engine, shared_data, tmp_path):
    """docker/compose.yaml: PostgreSQL, the MLflow server (artifact proxy), the CPU model server; the smoke
    pipeline logs into it, `eagrl runs compare` reads the runs back, `stop` + `start` loses none."""
    from support.cli import run_cli

    pg, mlflow_port, serve_port = free_port(), free_port(), free_port()
    env = {**os.environ, "DOCKER_HOST": engine, "EAGRL_POSTGRES_IMAGE": f"eagrl-postgres:{TAG}",
           "EAGRL_DB_PASSWORD": "stack-test-pw-8e1", "EAGRL_PG_PORT": str(pg), "EAGRL_MLFLOW_PORT": str(mlflow_port),
           "EAGRL_SERVE_PORT": str(serve_port), "EAGRL_API_KEY": KEY, "EAGRL_SERVE_MODEL": "tiny",
           "EAGRL_IMAGE_TAG": TAG}
    compose = ["docker-compose", "-f", str(ROOT / "docker" / "compose.yaml"), "-p", f"eagrltest{pg}"]

    def stack(*args: str) -> subprocess.CompletedProcess:
        res = subprocess.run([*compose, *args], capture_output=True, text=True, timeout=600, env=env)
        assert res.returncode == 0, f"docker-compose {' '.join(args)}: {res.stderr[-3000:]}"
        return res

    url = f"http://127.0.0.1:{mlflow_port}"
    ws = tmp_path / "ws"
    ws.mkdir()
    common = ["--profile", "smoke", "--data-path", str(shared_data / "mimic-iv-demo-clif"), "--workspace", str(ws),
              "--set", f"tracking.mlflow_tracking_uri={url}"]
    try:
        stack("up", "-d")
        _wait_http(f"{url}/health", 300, "the MLflow server")
        first = run_cli("run", *common, "--out", str(ws / "out-a"), timeout=1200)
        assert first.returncode == 0, first.stderr[-3000:]
        run_a = first.stdout.split()[-1]

        stack("stop")
        stack("start")
        _wait_http(f"{url}/health", 300, "the MLflow server after the restart")
        import mlflow

        client = mlflow.MlflowClient(url)
        a = client.get_run(run_a)  # still there, from PostgreSQL; its artifact from the proxy's volume
        assert a.info.status == "FINISHED" and a.info.artifact_uri.startswith("mlflow-artifacts:/")
        assert [p.path for p in client.list_artifacts(run_a)] == ["summary.json"]
        assert not (ws / "mlruns").exists() and not (ws / "mlartifacts").exists() and not (ws / "mlflow.db").exists()

        second = run_cli("run", *common, "--set", "data.seed=7", "--out", str(ws / "out-b"), timeout=1200)
        assert second.returncode == 0, second.stderr[-3000:]
        run_b = second.stdout.split()[-1]
        res = run_cli("runs", "compare", run_a, run_b, "--tracking-uri", url, "--json")
        assert res.returncode == 0, res.stderr
        cmp = json.loads(res.stdout)
        assert cmp["params"]["data.seed"] == ["42", "7"]
        assert cmp["metrics"]["prepare.n_stays"][0] == cmp["metrics"]["prepare.n_stays"][1] > 50

        serve = f"http://127.0.0.1:{serve_port}"
        _wait_http(f"{serve}/v2/health/ready", 300, "the model server")
        chat = openai.OpenAI(base_url=f"{serve}/openai/v1", api_key=KEY).chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "Risk?"}], max_tokens=4, temperature=0)
        assert chat.choices[0].message.content
    finally:
        logs = subprocess.run([*compose, "logs", "--no-color", "--tail", "30"], capture_output=True, text=True,
                              timeout=120, env=env)
        print(logs.stdout[-4000:])
        subprocess.run([*compose, "down", "-v"], capture_output=True, timeout=300, env=env)
