"""What each pipeline task asks of Kubernetes on a cluster: GPUs, nodes, the workspace volume, secrets.

``apply_platform(settings=cfg.cluster, images=cfg.pipeline)`` is called once at the end of the ``@dsl.pipeline``
function that :func:`pipelines.eagrl_pipeline.build_pipeline` makes for a config, and configures every task created
so far (so a new stage gets it without another line). Each task's image is set here too: ``pipeline.gpu_image`` for a
task that requests GPUs, ``pipeline.image`` for the others. KFP's local SubprocessRunner ignores all of it; its
DockerRunner uses the images.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kfp import kubernetes
from kfp.dsl import PipelineTask

from eagrl.config.cluster import ClusterConfig

if TYPE_CHECKING:
    from eagrl.config import PipelineConfig

WORKSPACE_ENV = "EAGRL_WORKSPACE"


def apply_platform(settings: ClusterConfig, images: "PipelineConfig", tasks: list[PipelineTask] | None = None) -> None:
    """Configure ``tasks`` (default: every task of the pipeline being defined) for the cluster."""
    if tasks is None:
        from kfp.dsl import pipeline_context

        tasks = list(pipeline_context.Pipeline.get_default_pipeline().tasks.values())
    for task in tasks:
        configure_task(task, settings)
        task.container_spec.image = task_image(task.name, settings, images)


def task_image(task_name: str, s: ClusterConfig, images: "PipelineConfig") -> str:
    """The CUDA image (``pipeline.gpu_image``) for a task that requests GPUs, else ``pipeline.image``."""
    return images.gpu_image if s.gpus.get(task_name, 0) else images.image


def configure_task(task: PipelineTask, s: ClusterConfig) -> PipelineTask:
    task.set_cpu_request(s.cpu_request).set_memory_request(s.memory_request)
    gpus = s.gpus.get(task.name, 0)
    if gpus:
        task.set_accelerator_type(s.accelerator_type).set_accelerator_limit(gpus)
        for label in s.gpu_node_selector:
            kubernetes.add_node_selector(task, *label.split("=", 1))
        for t in s.gpu_tolerations:
            kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect)
    if s.data == "pvc":  # one RWX volume is the workspace of every task: data/, data.dvc, the DVC cache
        kubernetes.mount_pvc(task, pvc_name=s.pvc_name, mount_path=s.workspace_path)
    else:  # object store: a scratch workspace; DVC's remote and KFP's artifacts are in S3-compatible storage
        kubernetes.empty_dir_mount(task, volume_name="workspace", mount_path=s.workspace_path)
    task.set_env_variable(WORKSPACE_ENV, s.workspace_path)
    for secret in s.secrets:
        kubernetes.use_secret_as_env(task, secret_name=secret.name, secret_key_to_env=secret.env)
    task.set_caching_options(s.enable_caching)
    return task
