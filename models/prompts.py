"""Task tokens and the prompts the reference feeds the model.

Florence-2 is trained on expanded prompts, not on the task tokens themselves:
transformers' `Florence2Processor._construct_prompts` replaces the task token with the
sentence below before tokenising (`task_prompts_without_inputs` in
transformers/models/florence2/processing_florence2.py, checked with transformers 5.23).
tests/test_parse.py checks these strings against that source.
"""
from __future__ import annotations

from edge_agent.models.errors import ModelSettingError

TASK_TOKENS = {"od": "<OD>", "ocr": "<OCR_WITH_REGION>"}

_PROMPTS = {
    "<OD>": "Locate the objects with category name in the image.",
    "<OCR_WITH_REGION>": "What is the text in the image, with regions?",
}


def prompt_for(task: str) -> str:
    """The expanded prompt for a short task name ("od", "ocr") or a task token ("<OD>")."""
    token = TASK_TOKENS.get(task, task)
    try:
        return _PROMPTS[token]
    except KeyError:
        raise ModelSettingError(f"unknown task {task!r}: expected one of {', '.join(TASK_TOKENS)}") from None
