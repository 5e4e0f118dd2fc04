"""``Job.wait(progress=True)`` in a real Jupyter kernel: one output, updated in place, ending on the final counts."""

from __future__ import annotations

import os
import textwrap

import pytest

from batcher import Client


@pytest.fixture(autouse=True)
def _jupyter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # jupyter_core warns about its coming platformdirs switch unless told which to use.
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")


def test_progress_bar_in_a_notebook(client: Client, cluster_env: dict[str, str]) -> None:
    import nbclient  # imported after JUPYTER_PLATFORM_DIRS is set
    import nbformat

    code = textwrap.dedent(
        """
        import batcher
        with batcher.Client() as client:
            prompts = [[{"role": "user", "content": str(i)}] for i in range(12)]
            job = client.submit(model="gpt-notebook", messages=prompts)
            status = job.wait(progress=True, timeout=60)
        print(status.state.value)
        """
    )
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    # The kernel inherits this process's environment: the cluster's BATCHER_* settings.
    assert os.environ["BATCHER_QUEUE"] == cluster_env["BATCHER_QUEUE"]
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3").execute()

    outputs = notebook.cells[0].outputs
    displays = [o for o in outputs if o.output_type == "display_data"]
    streams = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "completed" in streams
    assert "ipywidgets" not in streams  # rich's live display would ask for it; we do not need it
    assert len(displays) == 1, [o.output_type for o in outputs]  # updated in place, not printed again
    final = displays[0].data
    assert final["text/html"].startswith("<pre")
    assert "12/12" in final["text/plain"] and "12 ok" in final["text/plain"] and "0 failed" in final["text/plain"]
