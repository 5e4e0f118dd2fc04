"""LLM-as-judge: the rubric, the question and the answer go to a judge model; its verdict is parsed.

Judge requests are ordinary batcher requests: the run submits them as a second job on the same
queue (same retries, rate limits, resume and cache), keyed like any request by a hash of
(model, messages, params). The instructions sit in the system message and the material in the
user message, so a judge that echoes its input can never be mistaken for a verdict.
"""

from __future__ import annotations

import json
import re
from typing import Any

from batcher.evals.scorers import Score
from batcher.evals.suite import Item, LlmJudgeSpec, request_key

VERDICT_INSTRUCTIONS = (
    "You are a strict grader. You are given a rubric, a conversation, optionally a reference answer, "
    "and an answer to grade. Judge only whether the answer meets the rubric. Explain briefly, then end "
    "with a line that is exactly `VERDICT: PASS` or `VERDICT: FAIL`."
)
SCALE_INSTRUCTIONS = (
    "You are a strict grader. You are given a rubric, a conversation, optionally a reference answer, "
    "and an answer to grade. Rate how well the answer meets the rubric. Explain briefly, then end with "
    "a line that is exactly `SCORE: n` where n is a whole number from 0 to {scale}."
)

_VERDICT = re.compile(r"\bVERDICT\s*[:=]\s*\**\s*(PASS|FAIL)\b", re.IGNORECASE)
_SCORE = re.compile(r"\bSCORE\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)(?:\s*/\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)
_BARE = re.compile(r"^\W*(PASS|FAIL|YES|NO)\W*$", re.IGNORECASE)


def _conversation(messages: list[dict[str, Any]]) -> str:
    lines = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        lines.append(f"{message.get('role', 'user')}: {content}")
    return "\n".join(lines)


def judge_messages(spec: LlmJudgeSpec, item: Item, output: str) -> list[dict[str, Any]]:
    instructions = SCALE_INSTRUCTIONS.format(scale=spec.scale) if spec.scale else VERDICT_INSTRUCTIONS
    parts = [f"## Rubric\n{spec.rubric}", f"## Conversation\n{_conversation(item.messages)}"]
    if item.expected is not None:
        reference = item.expected if isinstance(item.expected, str) else json.dumps(item.expected)
        parts.append(f"## Reference answer\n{reference}")
    parts.append(f"## Answer to grade\n{output}")
    return [{"role": "system", "content": instructions}, {"role": "user", "content": "\n\n".join(parts)}]


def judge_key(spec: LlmJudgeSpec, messages: list[dict[str, Any]]) -> str:
    return request_key(spec.model, messages, spec.params)


def parse_verdict(spec: LlmJudgeSpec, text: str) -> Score:
    """The judge's reply as a Score. The last verdict line wins (judges sometimes restate the format)."""
    reason = " ".join(text.split())[:200]
    if spec.scale:
        found = _SCORE.findall(text)
        if found:
            value_text, out_of = found[-1]
            scale = float(out_of) if out_of else float(spec.scale)
            value = min(max(float(value_text) / scale, 0.0), 1.0) if scale > 0 else 0.0
            return Score(value, value >= spec.pass_threshold, reason)
    else:
        verdicts = _VERDICT.findall(text)
        if verdicts:
            ok = verdicts[-1].upper() == "PASS"
            return Score(1.0 if ok else 0.0, ok, reason)
        bare = _BARE.match(text.strip())
        if bare:
            ok = bare.group(1).upper() in ("PASS", "YES")
            return Score(1.0 if ok else 0.0, ok, reason)
    return Score(0.0, False, f"judge verdict not understood: {reason!r}")
