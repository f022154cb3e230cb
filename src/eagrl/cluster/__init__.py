"""Running the pipeline on a Kubeflow Pipelines cluster: platform settings, submission and schedules."""
