# One image for every batcher service (api, worker, beat, flower, migrate): see docker-compose.yml.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY batcher ./batcher
COPY workers ./workers
COPY alembic ./alembic
# [monitoring] brings Flower; prometheus_client and python-json-logger are core dependencies.
RUN pip install --no-cache-dir -e '.[monitoring]'
USER nobody
# api, flower, worker metrics
EXPOSE 8000 5555 9808
CMD ["batcher", "worker"]
