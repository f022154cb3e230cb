# The model server on CPU: `eagrl serve` on KServe's ModelServer with the transformers backend (no vLLM, no
# CUDA); `serve.Dockerfile` is its GPU variant. Runs with a read-only root filesystem: only /tmp is written.
# The build stage is pipeline.Dockerfile's, instruction for instruction, so the two images share its layers
# (one dependency install for both); `tracking` also gives the MLflow client S3 access for models:/ URIs.
#   docker build -f docker/serve-cpu.Dockerfile -t eagrl-serve-cpu:0.1.0 .
#   docker run --read-only --tmpfs /tmp -e EAGRL_API_KEY=... -v MODEL:/mnt/models:ro -p 8080:8080 eagrl-serve-cpu:0.1.0
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
RUN groupadd --gid 10001 eagrl && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/eagrl eagrl
COPY --from=build /opt/venv /opt/venv
# caches and MLflow's scratch go to /tmp, the one writable place under --read-only
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/hf \
    TOKENIZERS_PARALLELISM=false \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    EAGRL_MODEL_CACHE=/tmp/models
USER 10001:10001
WORKDIR /home/eagrl
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=4)"]
ENTRYPOINT ["eagrl"]
CMD ["serve", "--host=0.0.0.0", "--port=8080", "--model=/mnt/models"]
