"""Submit the compiled pipeline to a KFP endpoint, once or on a schedule, with ``kfp.Client``.

``submit_run`` uploads the pipeline YAML as a version named by its content (so an unchanged pipeline is
uploaded once), then starts a run of that version in the configured experiment; ``schedule_run`` creates a
recurring run (cron, max concurrency, catch-up off by default) of the same version for scheduled
retraining. The run's parameters are the pipeline's own (profile, dataset, task, model, data_path,
overrides), so the KFP UI shows and can change them.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from eagrl.config.cluster import ClusterConfig
from eagrl.errors import ConfigError, EagrlError


@dataclass
class Submitted:
    pipeline_id: str
    version_id: str
    experiment_id: str
    run_id: str | None = None
    recurring_run_id: str | None = None


def make_client(cluster: ClusterConfig):
    """A ``kfp.Client`` authenticated by a bearer token (from ``$token_env``) or by the kubeconfig."""
    import kfp

    kwargs = dict(host=cluster.host, namespace=cluster.namespace, verify_ssl=cluster.verify_ssl)
    if cluster.auth == "token":
        token = os.environ.get(cluster.token_env)
        if not token:
            raise ConfigError(f"cluster.auth is token but ${cluster.token_env} is empty: export the KFP token there")
        if not cluster.host:
            raise ConfigError("cluster.auth is token but cluster.host is not set: name the KFP endpoint")
        kwargs["existing_token"] = token
    else:
        _check_kubeconfig(cluster)
        kwargs["kube_context"] = cluster.kube_context
    class Client(kfp.Client):
        def _load_config(self, *args, **kw):  # before the constructor's first request (healthz)
            config = super()._load_config(*args, **kw)
            _keep_proxy_path(config)
            return config

    with _quiet():
        return Client(**kwargs)


def _keep_proxy_path(config) -> None:
    """The kubernetes client's token-refresh hook (a kubeconfig user with a token) resets ``host`` to the API
    server before every request, dropping the KFP service-proxy path kfp.Client appended: put it back (without
    its trailing slash, which doubled the one every API path starts with)."""
    config.host = host = config.host.rstrip("/")
    hook = config.refresh_api_key_hook
    if hook is None:
        return

    def refresh(c):
        hook(c)  # which also re-installs itself as the hook
        c.host, c.refresh_api_key_hook = host, refresh

    config.refresh_api_key_hook = refresh


def _check_kubeconfig(cluster: ClusterConfig) -> None:
    if cluster.host:  # an explicit endpoint (e.g. a port-forward) needs no kubeconfig
        return
    from kubernetes import config as k8s_config

    try:
        contexts, current = k8s_config.list_kube_config_contexts()
    except Exception as exc:  # noqa: BLE001 - missing or unreadable kubeconfig: say which
        where = os.environ.get("KUBECONFIG", "~/.kube/config")
        raise ConfigError(f"cluster.auth is kubeconfig but {where} cannot be read: {exc}") from None
    names = [c["name"] for c in contexts]
    if cluster.kube_context and cluster.kube_context not in names:
        raise ConfigError(f"cluster.kube_context {cluster.kube_context!r} is not in the kubeconfig (has {names})")


@contextlib.contextmanager
def _quiet():
    """kfp.Client prints links and a FutureWarning on stdout; the CLI keeps stdout for ids."""
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore", FutureWarning)
        yield


def run_parameters(profile: str, dataset: str = "", task: str = "", model: str = "", data_path: str = "",
                   overrides: dict | None = None) -> dict[str, str]:
    """The pipeline's parameters as the KFP UI shows them (empty: the profile's value)."""
    return {"profile": profile, "dataset": dataset or "", "task": task or "", "model": model or "",
            "data_path": data_path or "", "overrides": json.dumps(overrides or {}, sort_keys=True)}


def upload(client, package: Path, cluster: ClusterConfig) -> tuple[str, str]:
    """Upload ``package`` as a version of ``cluster.pipeline_name`` named by its content; reuse an equal one."""
    digest = hashlib.sha256(Path(package).read_bytes()).hexdigest()[:12]
    version_name = f"{cluster.pipeline_name}-{digest}"
    with _quiet():
        pipeline_id = client.get_pipeline_id(cluster.pipeline_name)
        if pipeline_id is None:  # its first version is named after the pipeline; ours are named by content
            pipeline = client.upload_pipeline(str(package), pipeline_name=cluster.pipeline_name,
                                              description="EAG-RL: EHR validation -> ... -> deployment")
            pipeline_id = pipeline.pipeline_id
        same = client.list_pipeline_versions(pipeline_id, page_size=1, filter=json.dumps(
            {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": version_name}]}))
        if same.pipeline_versions:
            return pipeline_id, same.pipeline_versions[0].pipeline_version_id
        version = client.upload_pipeline_version(str(package), pipeline_version_name=version_name,
                                                 pipeline_id=pipeline_id)
    return pipeline_id, version.pipeline_version_id


def submit_run(client, package: Path, cluster: ClusterConfig, params: dict[str, str],
               run_name: str | None = None) -> Submitted:
    """Upload the pipeline (if new) and start one run of it with ``params``."""
    pipeline_id, version_id = upload(client, package, cluster)
    with _quiet():
        experiment = client.create_experiment(cluster.experiment)
        run = client.run_pipeline(experiment.experiment_id, run_name or _name("eagrl", params),
                                  params=params, pipeline_id=pipeline_id, version_id=version_id,
                                  pipeline_root=cluster.pipeline_root, enable_caching=cluster.enable_caching,
                                  service_account=cluster.service_account)
    return Submitted(pipeline_id, version_id, experiment.experiment_id, run_id=run.run_id)


def schedule_run(client, package: Path, cluster: ClusterConfig, params: dict[str, str],
                 name: str | None = None) -> Submitted:
    """Upload the pipeline (if new) and create a recurring run on ``cluster.schedule_cron``."""
    pipeline_id, version_id = upload(client, package, cluster)
    with _quiet():
        experiment = client.create_experiment(cluster.experiment)
        job = client.create_recurring_run(
            experiment.experiment_id, name or _name("eagrl-retrain", params),
            description=f"scheduled retraining, cron {cluster.schedule_cron!r}",
            cron_expression=cluster.schedule_cron, max_concurrency=cluster.max_concurrency,
            no_catchup=not cluster.catchup, params=params, pipeline_id=pipeline_id, version_id=version_id,
            pipeline_root=cluster.pipeline_root, enable_caching=cluster.enable_caching,
            service_account=cluster.service_account)
    return Submitted(pipeline_id, version_id, experiment.experiment_id, recurring_run_id=job.recurring_run_id)


def _name(prefix: str, params: dict[str, str]) -> str:
    parts = [prefix, params.get("profile", ""), params.get("dataset", ""), params.get("task", "")]
    return "-".join(p for p in parts if p)


def api_errors(fn):
    """Turn the KFP API's errors into one EagrlError line naming the endpoint and the HTTP status."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import kfp_server_api
        import urllib3

        try:
            return fn(*args, **kwargs)
        except kfp_server_api.ApiException as exc:
            raise EagrlError(f"the KFP API answered {exc.status} {exc.reason}: {str(exc.body)[:300]}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise EagrlError(f"cannot reach the KFP API: {exc}") from exc

    return wrapper
