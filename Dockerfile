# syntax=docker/dockerfile:1
# One image for every service; the command picks the service, exactly as infra/local/services.sh
# starts it:   docker run IMAGE python -m services.<registry|trainer|evaluator|deployer|inference|monitor>
#
# Build:  docker build -t mlops:dev .                      (CPU torch, the small image)
#         docker build --build-arg TORCH_INDEX_URL= -t mlops:cuda .   (torch from the default index: CUDA build)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment with the dependencies, then the project installed into it ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first, from pyproject.toml alone, so that a code change does not reinstall them.
# torch comes from the CPU index unless TORCH_INDEX_URL is emptied.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["ml"]))' > /tmp/requirements.txt
RUN pip install setuptools==80.9.0 wheel==0.45.1 \
 && if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" "torch>=2.5"; fi \
 && pip install -r /tmp/requirements.txt

# The code, installed in place (editable, without dependencies): migrations and data files stay
# beside their modules, and the `mlops` CLI is on PATH.
COPY README.md ./
COPY libs ./libs
COPY services ./services
RUN pip install --no-deps --no-build-isolation -e . \
 && python -m compileall -q libs services

# --- runtime: the environment and the code, nothing to build with, an unprivileged user ---
# Servers listen on every interface of the container (the defaults are loopback only).
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="mlops" \
      org.opencontainers.image.description="Closed-loop MLOps platform: every service from one image" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 mlops \
 && useradd --system --uid 10001 --gid mlops --home-dir /home/mlops --create-home --shell /usr/sbin/nologin mlops
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/mlops \
    MLOPS_TELEMETRY_METRICS_HOST=0.0.0.0 \
    MLOPS_REGISTRY_GRPC_HOST=0.0.0.0 \
    MLOPS_TRAINER_GRPC_HOST=0.0.0.0 \
    MLOPS_EVALUATOR_GRPC_HOST=0.0.0.0 \
    MLOPS_DEPLOYER_GRPC_HOST=0.0.0.0 \
    MLOPS_INFERENCE_GRPC_HOST=0.0.0.0 \
    MLOPS_MONITOR_GRPC_HOST=0.0.0.0
WORKDIR /app
USER 10001:10001
# gRPC APIs (registry 50051, deployer 50052, monitor 50053, trainer 50054, evaluator 50055; mutual TLS),
# their token listeners (port + 10),
# inference (OIP) 8001, metrics 9101-9105 and 8002
EXPOSE 50051 50052 50053 50054 50055 50061 50062 50063 50064 50065 8001 8002 9101 9102 9103 9104 9105
STOPSIGNAL SIGTERM
CMD ["python", "-m", "services.registry"]
