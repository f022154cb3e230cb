# The pipeline components on CPU: every `eagrl` stage (KFP component image, $EAGRL_IMAGE) and the MLflow
# tracking server. Build from the repository root:
#   docker build -f docker/pipeline.Dockerfile -t eagrl-pipeline:0.1.0 .
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
COPY docker/install.sh ./docker/install.sh
RUN PYTHON=python3.11 sh docker/install.sh "tracking"

FROM python:3.11.14-slim-bookworm
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
