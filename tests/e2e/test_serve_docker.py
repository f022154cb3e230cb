"""docker/: pinned bases, non-root, the Makefile's install, the files the install needs (static checks)."""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALL_DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
DOCKERFILES = [p for p in ALL_DOCKERFILES if p.name != "postgres.Dockerfile"]  # the images eagrl installs into


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for op, rest in _instructions(path):
        if op == "FROM":
            stages.append([])
        if stages:  # ARGs before the first FROM belong to no stage
            stages[-1].append((op, rest))
    return stages


def test_the_four_images_exist():
    assert {p.name for p in DOCKERFILES} == {"pipeline.Dockerfile", "pipeline-cuda.Dockerfile", "serve.Dockerfile",
                                             "serve-cpu.Dockerfile"}


def _pinned(image: str) -> bool:
    return ("@sha256:" in image or bool(re.search(r":\d+(\.\d+)+[\w.-]*$", image))) and not image.endswith(":latest")


@pytest.mark.parametrize("path", ALL_DOCKERFILES, ids=lambda p: p.name)
def test_bases_are_pinned(path):
    """Every FROM is a pinned image, or ${BASE_IMAGE} whose default (ARG before the first FROM) is one."""
    ops = _instructions(path)
    first_from = next(i for i, (op, _) in enumerate(ops) if op == "FROM")
    args = dict(rest.split("=", 1) for op, rest in ops[:first_from] if op == "ARG" and "=" in rest)
    for op, rest in ops:
        if op == "FROM":
            image = rest.split()[0]
            if image == "${BASE_IMAGE}":
                assert "BASE_IMAGE" in args, f"{path.name}: FROM ${{BASE_IMAGE}} without an ARG default"
                image = args["BASE_IMAGE"]
            assert "$" not in image, f"{path.name}: FROM {image} is not a literal image"
            assert _pinned(image), f"{path.name}: {image} is unpinned"


@pytest.mark.parametrize("path", ALL_DOCKERFILES, ids=lambda p: p.name)
def test_final_stage_runs_as_a_created_non_root_user(path):
    final = _stages(path)[-1]
    users = [rest for op, rest in final if op == "USER"]
    assert users, f"{path.name}: the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    created = " ".join(rest for op, rest in final if op == "RUN")
    assert f"--uid {user}" in created, f"{path.name}: user {user} is not created in the final stage"
    after = final[[i for i, (op, _) in enumerate(final) if op == "USER"][-1]:]
    assert not any(op == "RUN" for op, _ in after), f"{path.name}: RUN after USER runs as the user, keep it before"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_the_project_with_the_shared_script(path):
    """Two calls of docker/install.sh: the dependencies (a layer that only pyproject.toml and constraints.txt
    invalidate), then the project after its sources are copied; both with the same extras."""
    build = _stages(path)[0]
    runs = [i for i, (op, rest) in enumerate(build) if op == "RUN" and "docker/install.sh" in rest]
    assert len(runs) == 2, f"{path.name}: install with docker/install.sh twice (--deps-only, then the project)"
    deps, project = (shlex.split(build[i][1].split("docker/install.sh", 1)[1]) for i in runs)
    assert deps[:1] == ["--deps-only"] and "--deps-only" not in project, path.name
    before_deps = " ".join(rest for op, rest in build[:runs[0]] if op == "COPY")
    for needed in ("pyproject.toml", "constraints.txt", "docker/install.sh", "docker/local"):
        assert needed in before_deps, f"{path.name}: {needed} is not copied before the dependencies' install"
    assert "src" not in before_deps.split(), f"{path.name}: the sources would invalidate the dependencies' layer"
    before_project = " ".join(rest for op, rest in build[runs[0]:runs[1]] if op == "COPY")
    for needed in ("README.md", "src", "components", "pipelines"):
        assert needed in before_project, f"{path.name}: {needed} is not copied before the project's install"
    extras = deps[1] if len(deps) > 1 else ""
    assert (project[0] if project else "") == extras, f"{path.name}: the two installs name different extras"
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in filter(None, extras.split(",")):
        assert extra in declared, f"{path.name}: extra {extra!r} is not in pyproject.toml"
    final = _stages(path)[-1]
    assert any(op == "COPY" and "--from=build /opt/venv /opt/venv" in rest for op, rest in final)
    assert any(op == "ENV" and "PATH=/opt/venv/bin" in rest for op, rest in final)


def test_install_script_repeats_the_makefile_setup():
    make = (ROOT / "Makefile").read_text()
    script = (ROOT / "docker" / "install.sh").read_text()
    pins = re.search(r"pip install -q --upgrade (pip==\S+ setuptools==\S+ wheel==\S+)", make).group(1)
    assert f"--upgrade {pins}" in script, "the pip/setuptools/wheel pins differ from the Makefile's"
    assert re.search(r"pip install -q -c constraints\.txt -e '\.\[dev\]'", make)
    assert re.search(r'pip install -q --no-cache-dir -c "\$CONSTRAINTS" "\.\$\{EXTRAS:\+\[\$EXTRAS\]\}"', script)
    assert "CONSTRAINTS=constraints.txt" in script and "pip check" in script
    assert "--no-deps --force-reinstall ." in script  # the project over the dependencies' layer, nothing else


def test_only_the_documented_pin_is_dropped_and_vllm_fits_the_torch_pin():
    dropped = set()
    for path in DOCKERFILES:
        dropped |= {m for m in re.findall(r'DROP_PINS="([^"]*)"', path.read_text()) for m in m.split("|")}
    assert dropped <= {"fastapi"}
    assert "fastapi" in (ROOT / "docker" / "README.md").read_text()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in deps["dependencies"]
    assert any(d.startswith("vllm==0.30.0") for d in deps["optional-dependencies"]["gpu"])


@pytest.mark.parametrize("name", ["serve.Dockerfile", "serve-cpu.Dockerfile"])
def test_serve_image_serves_mounted_models_and_checks_its_health(name):
    ops = _instructions(ROOT / "docker" / name)
    cmd = next(rest for op, rest in ops if op == "CMD")
    assert '"serve"' in cmd and '"--model=/mnt/models"' in cmd and '"--host=0.0.0.0"' in cmd
    assert any(op == "EXPOSE" and rest == "8080" for op, rest in ops)
    assert any(op == "HEALTHCHECK" and "/v2/health/ready" in rest for op, rest in ops)


def test_cpu_images_take_the_cpu_torch_and_the_gpu_extra_stays_out():
    for name in ("pipeline.Dockerfile", "serve-cpu.Dockerfile"):
        text = (ROOT / "docker" / name).read_text()
        assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text, name
        assert '"gpu' not in text and "gpu," not in text, name


def test_the_cpu_images_share_one_build_stage():
    """serve-cpu's build stage is the pipeline's, so the dependency install (the long layer) is built once."""
    pipe, serve = (_instructions(ROOT / "docker" / n) for n in ("pipeline.Dockerfile", "serve-cpu.Dockerfile"))

    def build_part(ops):
        second_from = [i for i, (op, _) in enumerate(ops) if op == "FROM"][1]
        return ops[:second_from]
    assert build_part(pipe) == build_part(serve)


def test_the_build_context_leaves_the_workspace_out():
    """.dockerignore: only what the images install goes into the context (no .venv, data, runs, stores, caches)."""
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "exclude everything, then name what the build reads"
    allowed = {ln[1:] for ln in lines if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "constraints.txt", "README.md", "src", "components", "pipelines", "docker"}
    copied = set()
    for path in DOCKERFILES:
        for op, rest in _instructions(path):
            if op == "COPY" and not rest.startswith("--from"):
                copied |= {p.split("/")[0] for p in rest.split()[:-1]}
    assert copied <= allowed, copied - allowed


# ====================================================================== one name per image
def test_one_image_name_per_image_across_config_components_yaml_k8s_and_docker(tmp_path):
    """pipeline.image and pipeline.gpu_image (config) are the names: the compiled YAML gives each task the
    CUDA image when cluster.gpus gives it a GPU, else the CPU one; k8s/ and .ci/docker use the same names."""
    import yaml

    from eagrl.cli.ops import compile_for_cluster
    from eagrl.config import PipelineConfig, load_config

    pipe = PipelineConfig()
    registry, tag = pipe.image.rsplit("/", 1)[0], pipe.image.rsplit(":", 1)[1]
    assert pipe.image == f"{registry}/eagrl-pipeline:{tag}"
    assert pipe.gpu_image == f"{registry}/eagrl-pipeline-cuda:{tag}"
    committed = next(yaml.safe_load_all((ROOT / "pipelines" / "eagrl_pipeline.yaml").read_text()))
    gpus = load_config("paper").cluster.gpus
    for name, executor in committed["deploymentSpec"]["executors"].items():
        task = name.removeprefix("exec-")
        want = pipe.gpu_image if gpus.get(task, 0) else pipe.image
        assert executor["container"]["image"] == want, name
    # a compile profile's names reach every task
    path = compile_for_cluster(tmp_path / "p.yaml", "paper", {"pipeline.image": "reg.example/x/cpu:1.2.3",
                                                              "pipeline.gpu_image": "reg.example/x/gpu:1.2.3"})
    executors = next(yaml.safe_load_all(path.read_text()))["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert images == {"reg.example/x/cpu:1.2.3", "reg.example/x/gpu:1.2.3"}
    kustomize = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())
    mapped = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomize["images"]}
    assert mapped == {"eagrl-pipeline": pipe.image, "eagrl-serve": f"{registry}/eagrl-serve:{tag}"}
    used = set()
    for f in (ROOT / "k8s").glob("*.yaml"):
        used |= set(re.findall(r"^\s*(?:-\s*)?image:\s*(\S+)", f.read_text(), re.M))
    assert used - {"postgres:17.6-alpine3.22"} <= set(mapped), used
    script = (ROOT / ".ci" / "docker").read_text()
    assert "P().image" in script  # .ci/docker tags the local builds with the configured registry name
    for name in ("eagrl-pipeline", "eagrl-serve-cpu"):
        assert f"{name}:docker/" in script
