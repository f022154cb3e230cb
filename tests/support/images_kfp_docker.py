"""The pipeline through KFP's local DockerRunner: each component runs in the pipeline image, as on a cluster.

``python tests/support/images_kfp_docker.py WORKSPACE DATA_PATH IMAGE`` (DOCKER_HOST set) runs the smoke profile on
the MIMIC demo at DATA_PATH and prints one JSON line: each stage's status and the parent MLflow run id. Used by
tests/e2e/test_images.py in a process of its own (`kfp.local.init` configures the whole process); the pipeline
graph, with the image of each task, is built here for the smoke profile with both images set to IMAGE.

Every task runs in IMAGE (the CPU image; this machine has no GPU, so ``pipeline.gpu_image`` is set to it too),
as user 10001, on the host network namespace ``none``, with the workspace and the data mounted at their own
paths, the same paths the component arguments name. KFP mounts the pipeline root itself.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(workspace: str, data_path: str, image: str) -> None:
    from kfp import local

    import docker
    from eagrl.cli import build_config
    from eagrl.config import load_config
    from eagrl.stage import StageResult
    from eagrl.tracking.mlflow_run import end_run, start_parent_run
    from pipelines.eagrl_pipeline import STAGES, build_pipeline

    eagrl_pipeline = build_pipeline(load_config("smoke", {"pipeline.image": image, "pipeline.gpu_image": image}))
    ws = Path(workspace)
    out = ws / "out"
    cfg = build_config("smoke", data_path=Path(data_path), workspace=ws)  # as `eagrl run` builds it
    parent = start_parent_run(cfg)
    (ws / ".kfp").mkdir(exist_ok=True)  # the pipeline root: each task makes its folder there, as 10001
    for p in [ws, *ws.rglob("*")]:  # the host made mlflow.db; the tasks write it as 10001
        os.chown(p, 10001, 10001)
    mounts = [docker.types.Mount(str(ws), str(ws), type="bind"),
              docker.types.Mount(data_path, data_path, type="bind", read_only=True)]
    runner = local.DockerRunner(user="10001:10001", network_mode="none", entrypoint=[""], mounts=mounts)
    local.init(runner=runner, pipeline_root=str(ws / ".kfp"), raise_on_error=False)
    eagrl_pipeline(profile=cfg.profile, overrides=json.dumps(cfg.to_flat()), out_dir=str(out), parent_run_id=parent)
    stages = {}
    for stage in STAGES:
        res = StageResult.read(out, stage)
        stages[stage] = "not run" if res is None else res.status
    end_run(cfg, parent, "FINISHED" if all(s == "succeeded" for s in stages.values()) else "FAILED")
    print(json.dumps({"mlflow_run_id": parent, "stages": stages}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
