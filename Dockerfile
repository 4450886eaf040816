# syntax=docker/dockerfile:1
# One Dockerfile, three targets: api (no torch), worker (torch; CUDA-capable build from PyPI),
# dashboard (the built frontend behind nginx, proxying the API). .dockerignore keeps secrets,
# virtual environments, data and installed node_modules out of the build context.
# No Docker engine runs in CI; tests/test_dockerfile.py checks every stage's inputs and commands.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
RUN useradd --create-home --uid 10001 fedlora && mkdir -p /data && chown fedlora /data
COPY pyproject.toml README.md alembic.ini ./
COPY client_sdk ./client_sdk
COPY api ./api
COPY worker ./worker
COPY fedlora ./fedlora
COPY migrations ./migrations

FROM base AS api
# The API needs only the SDK's wire contract (pydantic), so the SDK goes in without its
# training dependencies and the image carries no torch.
RUN pip install --no-deps ./client_sdk && pip install .
USER fedlora
EXPOSE 8000
CMD ["sh", "-c", "alembic upgrade head && exec fedlora serve --host 0.0.0.0 --port 8000"]

FROM base AS worker
# PyPI's torch 2.13.0 wheel for Linux x86_64 is CUDA-enabled and also runs on the CPU.
ARG TORCH_SPEC="torch==2.13.0"
RUN pip install "${TORCH_SPEC}" && pip install ./client_sdk . "${TORCH_SPEC}"
USER fedlora
CMD ["fedlora", "worker"]

# The dashboard's typed client is generated from the API's OpenAPI document. The Node image has
# no Python, so a Python stage writes the document and the Node stage reads it (FEDLORA_OPENAPI).
FROM api AS openapi
RUN python -m api.openapi /tmp/openapi.json

FROM node:20-slim AS dashboard-build
WORKDIR /src
COPY frontend/package.json frontend/package-lock.json ./
RUN npm ci
# node_modules is in .dockerignore, so this copy leaves the installed one in place.
COPY frontend ./
COPY --from=openapi /tmp/openapi.json /openapi.json
ENV FEDLORA_OPENAPI=/openapi.json
RUN npm run build

FROM nginx:1.27-alpine AS dashboard
COPY deploy/nginx.conf /etc/nginx/conf.d/default.conf
COPY --from=dashboard-build /src/dist /usr/share/nginx/html
EXPOSE 80
