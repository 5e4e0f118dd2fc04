"""batcher's HTTP service: the native job API and the OpenAI Batch/Files API (``batcher api``)."""

from batcher.api.app import create_app

__all__ = ["create_app"]
