# The model server on NVIDIA GPUs: `eagrl serve` on KServe's ModelServer with the vLLM backend (the `gpu` extra
# pins the vLLM release built on the project's torch). `serve-cpu.Dockerfile` is the CPU variant (transformers).
#   docker build -f docker/serve.Dockerfile -t eagrl-serve:0.1.0 .
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu22.04
FROM ${BASE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
    build-essential && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY docker/install.sh ./docker/install.sh
COPY docker/local ./docker/local
RUN DROP_PINS="fastapi" PYTHON=python3.11 sh docker/install.sh --deps-only "gpu"
COPY README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
RUN DROP_PINS="fastapi" sh docker/install.sh "gpu"

FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 eagrl && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/eagrl eagrl
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    EAGRL_MODEL_CACHE=/home/eagrl/.cache/models
USER 10001:10001
WORKDIR /home/eagrl
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD ["python3.11", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=4)"]
ENTRYPOINT ["eagrl"]
CMD ["serve", "--host=0.0.0.0", "--port=8080", "--model=/mnt/models"]
