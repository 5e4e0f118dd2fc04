"""Reading prompt files (JSONL), one request per line, streamed.

Each non-blank line is one of:

- a JSON string: a single user prompt;
- a JSON array: a conversation (list of messages);
- a JSON object with ``messages`` (and optionally ``model``, ``custom_id`` and parameters);
- an OpenAI Batch API line: ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {...}}``.

Errors name the line. The reader is a generator consumed inside the submission's
transaction, so a bad line on line 40,000 rolls back everything before it.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

from batcher._exceptions import InvalidRequestError
from batcher._submit import RequestSpec
from batcher._validation import MAX_JSON_DEPTH, NestedTooDeeplyError

OPENAI_BATCH_URLS = frozenset({"/v1/chat/completions", "/chat/completions"})
_LINE_KEYS = frozenset({"messages", "model", "custom_id"})


def decode_line(raw: bytes, number: int) -> str:
    """One line of a file as text; ``InvalidRequestError`` naming the line if it is not UTF-8."""
    if number == 1:
        raw = raw.removeprefix(codecs.BOM_UTF8)  # editors on Windows start files with one
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        # The column an editor shows: characters before the bad byte, not bytes (é is two bytes).
        column = len(raw[: exc.start].decode(errors="replace")) + 1
        raise InvalidRequestError(
            f"is not UTF-8 (byte 0x{raw[exc.start]:02x} at column {column}); save the file as UTF-8",
            field=f"line {number}",
        ) from None


def parse_line(line: str | bytes, where: str) -> Any:
    """One JSON value; ``InvalidRequestError`` naming the line if it is not JSON or is nested too deeply."""
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        # The column on the line as an editor shows it (1-based, in characters); the line's own
        # line break or a Windows "\r" never shifts it.
        column = exc.pos - text.rfind("\n", 0, exc.pos)
        raise InvalidRequestError(
            f"is not valid JSON ({exc.msg} at column {column}); each line must be one JSON value",
            field=where,
        ) from None
    except RecursionError:  # thousands of levels: more than the parser can follow
        raise NestedTooDeeplyError(
            f"is nested too deeply to read (batcher takes at most {MAX_JSON_DEPTH} levels)", field=where
        ) from None


def _numbered(lines: Iterable[str] | Iterable[bytes] | IO[str] | IO[bytes]) -> Iterator[tuple[int, str]]:
    """``(number, text)`` of each line. A text file is read as bytes, so that a line that is not
    UTF-8 is named by its own number (a text reader fails a whole buffer ahead); a binary file or
    lines of bytes are decoded line by line the same way."""
    binary = getattr(lines, "buffer", None)
    if binary is not None and hasattr(binary, "readline"):
        for number, raw in enumerate(binary, start=1):
            yield number, decode_line(raw, number)
        return
    numbered = enumerate(lines, start=1)
    number = 0
    while True:
        try:
            number, line = next(numbered)
        except StopIteration:
            return
        except UnicodeDecodeError:
            raise InvalidRequestError(
                "or a line shortly after it is not UTF-8; save the file as UTF-8", field=f"line {number + 1}"
            ) from None
        text = decode_line(line, number) if isinstance(line, bytes) else str(line)
        yield number, text.removeprefix("\ufeff") if number == 1 else text


def read_jsonl(
    lines: Iterable[str] | Iterable[bytes] | IO[str] | IO[bytes], *, default_model: str | None
) -> Iterator[RequestSpec]:
    seen_ids: set[str] = set()
    for number, line in _numbered(lines):
        if not line.strip():
            continue
        where = f"line {number}"
        item = parse_line(line, where)
        spec = _spec(item, where, default_model)
        if spec.custom_id is not None:
            if spec.custom_id in seen_ids:
                raise InvalidRequestError(
                    f"custom_id {spec.custom_id!r} is used twice; each line needs its own", field=where
                )
            seen_ids.add(spec.custom_id)
        yield spec


def _model(value: Any, where: str, default_model: str | None) -> str:
    model = value if value is not None else default_model
    if not isinstance(model, str) or not model:
        raise InvalidRequestError('names no model; add "model" to the line or pass --model', field=where)
    return model


def _spec(item: Any, where: str, default_model: str | None) -> RequestSpec:
    if isinstance(item, str):
        return RequestSpec(
            model=_model(None, where, default_model),
            messages=[{"role": "user", "content": item}],
            where=where,
        )
    if isinstance(item, list):
        return RequestSpec(model=_model(None, where, default_model), messages=item, where=where)
    if not isinstance(item, dict):
        raise InvalidRequestError(
            'must be a prompt string, a list of messages or an object with "messages"', field=where
        )
    if "body" in item or "url" in item or "method" in item:
        return _openai_batch_line(item, where, default_model)
    if "messages" not in item:
        raise InvalidRequestError(_no_messages(item), field=where)
    params = {k: v for k, v in item.items() if k not in _LINE_KEYS}
    custom_id = item.get("custom_id")
    if custom_id is not None and not isinstance(custom_id, str):
        raise InvalidRequestError("custom_id must be a string", field=where)
    return RequestSpec(
        model=_model(item.get("model"), where, default_model),
        messages=item["messages"],
        params=params or None,
        custom_id=custom_id,
        where=where,
    )


_PROMPT_KEYS = ("prompt", "text", "content", "input", "question")
_ACCEPTED = (
    'a line is a prompt string ("Hi"), a list of messages, an object with "messages" '
    '({"messages": [{"role": "user", "content": "Hi"}]}) or an OpenAI Batch API line'
)


def _no_messages(item: dict[str, Any]) -> str:
    """Why an object line without ``messages`` is refused, and what to write instead."""
    named = next((k for k in _PROMPT_KEYS if k in item), None)
    if named is not None and isinstance(item[named], str):
        return (
            f'has "{named}" but no "messages": write {{"messages": [{{"role": "user", "content": ...}}]}} '
            f"or the prompt alone as a JSON string; {_ACCEPTED}"
        )
    return f'has no "messages"; {_ACCEPTED}'


def _openai_batch_line(item: dict[str, Any], where: str, default_model: str | None) -> RequestSpec:
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise InvalidRequestError("custom_id is missing; OpenAI batch lines need one", field=where)
    if item.get("method") != "POST":
        raise InvalidRequestError(f'method must be "POST", got {item.get("method")!r}', field=where)
    if item.get("url") not in OPENAI_BATCH_URLS:
        raise InvalidRequestError(f'url must be "/v1/chat/completions", got {item.get("url")!r}', field=where)
    body = item.get("body")
    if not isinstance(body, dict):
        raise InvalidRequestError("body must be a JSON object with model and messages", field=where)
    if "messages" not in body:
        raise InvalidRequestError('body has no "messages"', field=where)
    params = {k: v for k, v in body.items() if k not in ("model", "messages")}
    return RequestSpec(
        model=_model(body.get("model"), where, default_model),
        messages=body["messages"],
        params=params or None,
        custom_id=custom_id,
        where=where,
    )
