"""KFP v2 components: one per stage, each a thin typed wrapper over a library stage function."""
from eagrl.config import PipelineConfig

# The image a component is defined with: `pipeline.image`'s default. The pipeline replaces it for each task
# with the compile profile's `pipeline.image`, or `pipeline.gpu_image` for a task given GPUs in `cluster.gpus`
# (pipelines/platform.py); there is no other place that names an image.
IMAGE = PipelineConfig().image
