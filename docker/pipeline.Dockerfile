# The pipeline components on CPU: every `eagrl` stage (the KFP component image, `pipeline.image`) and the
# MLflow tracking server. Build from the repository root (`make images` does, with the local base):
#   docker build -f docker/pipeline.Dockerfile -t eagrl-pipeline:0.1.0 .
# BASE_IMAGE: any Debian bookworm with python3.11 and python3.11-venv; the default is the pinned public one.
# TORCH_INDEX: where the CPU torch wheel comes from (empty when docker/local/ holds it).
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY docker/install.sh ./docker/install.sh
COPY docker/local ./docker/local
RUN PYTHON=python3.11 sh docker/install.sh --deps-only "tracking"
COPY README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
RUN sh docker/install.sh "tracking"

FROM ${BASE_IMAGE}
# git: DVC runs git; nothing else is added to the base
RUN apt-get update && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 eagrl && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/eagrl eagrl
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    MPLBACKEND=Agg \
    DVC_NO_ANALYTICS=1 \
    EAGRL_WORKSPACE=/home/eagrl/workspace
USER 10001:10001
WORKDIR /home/eagrl
ENTRYPOINT ["eagrl"]
CMD ["--help"]
