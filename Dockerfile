FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY batcher ./batcher
COPY workers ./workers
COPY alembic ./alembic
RUN pip install --no-cache-dir -e .
USER nobody
CMD ["batcher", "worker"]
