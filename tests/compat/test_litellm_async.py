"""``batcher.litellm.abatch_completion*``: the awaited drop-in returns LiteLLM's own objects too."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from batcher import AllModelsFailedError, AsyncClient
from batcher import litellm as drop_in
from batcher.testing import FakeProvider, ModelBehaviour

HI = [{"role": "user", "content": "hi"}]


def test_the_async_drop_in_returns_litellms_objects(litellm_env: Any, fake_provider: FakeProvider) -> None:
    litellm = litellm_env
    fake_provider.set_behaviour("claude-compat-async-down", ModelBehaviour(fail_always_status=400))

    async def main() -> None:
        async with AsyncClient() as client:
            [ok, refused] = await drop_in.abatch_completion("gpt-4o-mini", [HI, [{"role": "nobody"}]], client=client)
            assert isinstance(ok, litellm.ModelResponse) and isinstance(refused, litellm.BadRequestError)
            fastest = await drop_in.abatch_completion_models(["gpt-4o-mini"], HI, client=client)
            assert isinstance(fastest, litellm.ModelResponse)
            every = await drop_in.abatch_completion_models_all_responses(
                ["claude-compat-async-down", "gpt-4o-mini"], HI, return_exceptions=True, client=client
            )
            assert isinstance(every[0], litellm.BadRequestError) and isinstance(every[1], litellm.ModelResponse)
            with pytest.raises(AllModelsFailedError) as lost:
                await drop_in.abatch_completion_models(["claude-compat-async-down"], HI, client=client)
            assert all(isinstance(e, litellm.BadRequestError) for e in lost.value.errors.values())

    asyncio.run(main())
