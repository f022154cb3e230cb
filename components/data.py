"""Data components: the validation gate and the versioned cohort."""
from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate_data(profile: str, dataset: str, task: str, model_source: str, data_path: str, overrides: str,
                  out_dir: str, parent_run_id: str, cohort: Output[Dataset], report: Output[HTML],
                  metrics: Output[Metrics]):
    """Great Expectations gates on the source and the cohort; fails the run on an error-level check."""
    import shutil
    import tempfile

    from eagrl.config import config_from_params
    from eagrl.data.stage import validate

    cfg = config_from_params(profile, dataset, task, data_path, overrides, model_source)
    result = validate(cfg, out_dir or tempfile.mkdtemp(), parent_run_id or None, cohort_out=cohort.path)
    shutil.copy(result.outputs["report"], report.path)
    for key, value in result.metrics.items():
        metrics.log_metric(key, float(value))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare_data(profile: str, dataset: str, task: str, model_source: str, data_path: str, overrides: str,
                 out_dir: str, parent_run_id: str, validated: Input[Dataset], cohort: Output[Dataset],
                 metrics: Output[Metrics]):
    """Store the raw import and the validated cohort in the workspace and version them with DVC."""
    import shutil
    import tempfile

    from eagrl.config import config_from_params
    from eagrl.data.stage import prepare

    cfg = config_from_params(profile, dataset, task, data_path, overrides, model_source)
    result = prepare(cfg, out_dir or tempfile.mkdtemp(), parent_run_id or None, validated_cohort=validated.path)
    shutil.copytree(result.outputs["cohort"], cohort.path)
    cohort.metadata.update({k: v for k, v in result.outputs.items() if k.endswith("md5")})
    for key, value in result.metrics.items():
        metrics.log_metric(key, float(value))
