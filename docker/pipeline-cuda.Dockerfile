# The pipeline components on NVIDIA GPUs (SFT/RL with DeepSpeed, rollouts with vLLM: the `gpu` extra): the
# image of the tasks that `cluster.gpus` gives a GPU (`pipeline.gpu_image`). torch and vLLM wheels carry their
# CUDA libraries; the base gives the CUDA 13 runtime and cuDNN.
#   docker build -f docker/pipeline-cuda.Dockerfile -t eagrl-pipeline-cuda:0.1.0 .
# BASE_IMAGE: another CUDA 13 runtime base with apt (e.g. a registry mirror's copy).
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu22.04
FROM ${BASE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
    build-essential git && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY docker/install.sh ./docker/install.sh
COPY docker/local ./docker/local
RUN DROP_PINS="fastapi" PYTHON=python3.11 sh docker/install.sh --deps-only "gpu,tracking"
COPY README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
RUN DROP_PINS="fastapi" sh docker/install.sh "gpu,tracking"

FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 git \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 eagrl && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/eagrl eagrl
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    DVC_NO_ANALYTICS=1 \
    EAGRL_WORKSPACE=/home/eagrl/workspace
USER 10001:10001
WORKDIR /home/eagrl
ENTRYPOINT ["eagrl"]
CMD ["--help"]
