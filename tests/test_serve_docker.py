"""docker/: pinned bases, non-root, the Makefile's install, the files the install needs (static checks)."""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))


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
        stages[-1].append((op, rest))
    return stages


def test_the_three_images_exist():
    assert {p.name for p in DOCKERFILES} == {"pipeline.Dockerfile", "pipeline-cuda.Dockerfile", "serve.Dockerfile"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_bases_are_pinned(path):
    for op, rest in _instructions(path):
        if op == "FROM":
            image = rest.split()[0]
            assert "$" not in image, f"{path.name}: FROM {image} is not a literal image"
            assert "@sha256:" in image or re.search(r":\d+(\.\d+)+[\w.-]*$", image), f"{path.name}: {image} is unpinned"
            assert not image.endswith(":latest")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
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
    build = _stages(path)[0]
    copied = " ".join(rest for op, rest in build if op == "COPY")
    for needed in ("pyproject.toml", "constraints.txt", "src", "docker/install.sh"):
        assert needed in copied, f"{path.name}: {needed} is not copied before the install"
    runs = [rest for op, rest in build if op == "RUN" and "docker/install.sh" in rest]
    assert len(runs) == 1, f"{path.name}: install with docker/install.sh exactly once"
    args = shlex.split(runs[0].split("docker/install.sh", 1)[1])
    extras = args[0] if args else ""
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


def test_only_the_documented_pin_is_dropped_and_vllm_fits_the_torch_pin():
    dropped = set()
    for path in DOCKERFILES:
        dropped |= {m for m in re.findall(r'DROP_PINS="([^"]*)"', path.read_text()) for m in m.split("|")}
    assert dropped <= {"fastapi"}
    assert "fastapi" in (ROOT / "docker" / "README.md").read_text()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in deps["dependencies"]
    assert any(d.startswith("vllm==0.30.0") for d in deps["optional-dependencies"]["gpu"])


def test_serve_image_serves_mounted_models_and_checks_its_health():
    ops = _instructions(ROOT / "docker" / "serve.Dockerfile")
    cmd = next(rest for op, rest in ops if op == "CMD")
    assert '"serve"' in cmd and '"--model=/mnt/models"' in cmd and '"--host=0.0.0.0"' in cmd
    assert any(op == "EXPOSE" and rest == "8080" for op, rest in ops)
    assert any(op == "HEALTHCHECK" and "/v2/health/ready" in rest for op, rest in ops)
