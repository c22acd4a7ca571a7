# One image for every k80s component; pick the program with the container command:
#   k80s-plugin    the K80 device plugin (DaemonSet, one per GPU node)
#   k80s-extender  the scheduler extender (sidecar of the upstream kube-scheduler)
#   k80s-operator  the ModelDeployment operator
#   k80s           the CLI (estimate, plan, models, inspect)
# Build: docker build -t k80s:0.1.0 .   (the tests do not need the image)

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip install --no-cache-dir --upgrade pip \
 && python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="k80s" \
      org.opencontainers.image.description="K80 die-aware device plugin, scheduler extender and operator for LLM serving" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin k80s
# NVML (libnvidia-ml.so.1) is injected by the NVIDIA container runtime on GPU nodes; the plugin
# also runs without it on the simulated backend (--simulate 2xK80).
USER 10001:10001
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 8080 8888 8889 9480
ENTRYPOINT ["k80s"]
CMD ["--help"]
