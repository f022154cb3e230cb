"""KFP v2 components: one per stage, each a thin typed wrapper over a library stage function."""
import os

# The image every component runs in on a cluster (docker/Dockerfile builds it); override at compile time.
IMAGE = os.environ.get("EAGRL_IMAGE", "ghcr.io/eagrl/eagrl:0.1.0")
