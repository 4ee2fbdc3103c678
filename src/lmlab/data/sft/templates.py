"""Prompt templates for instruction data: how an instruction and its input become the prompt.

``sft.template`` names a built-in template (``alpaca`` by default) or gives a format string;
``lmlab chat`` renders a first turn with the same template, so training and inference agree.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from lmlab.errors import ConfigError


@dataclass(frozen=True)
class PromptTemplate:
    """How a record's instruction (and input) are written before the response.

    ``prompt`` is used when the input is empty (and by ``lmlab chat``, which reads its
    ``prompt`` and ``stop`` attributes); ``prompt_with_input`` otherwise.
    """

    name: str
    prompt: str  # contains {instruction}
    prompt_with_input: str  # contains {instruction} and, if it uses the input, {input}
    stop: tuple[str, ...] = ()

    def render(self, instruction: str, input: str = "") -> str:
        # str.format only parses the template; braces in the user's text are left alone
        if not input:
            return self.prompt.format(instruction=instruction, input="")
        if "{input}" not in self.prompt_with_input:
            instruction = f"{instruction}\n\n{input}"
        return self.prompt_with_input.format(instruction=instruction, input=input)

    def chat_prompt(self) -> str:
        """The no-input prompt with ``{prompt}`` where the user's message goes (template.json)."""
        return self.prompt.format(instruction="{prompt}", input="")


_ALPACA_HEAD = "Below is an instruction that describes a task"
TEMPLATES: dict[str, PromptTemplate] = {
    # Stanford Alpaca's two prompts (tatsu-lab/stanford_alpaca, train.py)
    "alpaca": PromptTemplate(
        name="alpaca",
        prompt=(
            f"{_ALPACA_HEAD}. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Response:\n"
        ),
        prompt_with_input=(
            f"{_ALPACA_HEAD}, paired with an input that provides further context. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        ),
        stop=("### Instruction:",),
    ),
}
DEFAULT_TEMPLATE = "alpaca"


def resolve_template(value: str) -> PromptTemplate:
    """``sft.template``: a name in TEMPLATES (empty: alpaca) or a custom format string.

    A custom string must contain ``{instruction}`` and may contain ``{input}``; any other
    placeholder, a format spec or unbalanced braces raise ConfigError naming sft.template.
    """
    if not value:
        value = DEFAULT_TEMPLATE
    if value in TEMPLATES:
        return TEMPLATES[value]
    names: list[str] = []
    try:
        for _, fname, spec, conv in string.Formatter().parse(value):
            if fname is None:
                continue
            if fname not in ("instruction", "input"):
                raise ConfigError(
                    f"sft.template: unknown placeholder {{{fname}}} (known: {{instruction}}, {{input}}; "
                    f"named templates: {', '.join(TEMPLATES)}; write {{{{ }}}} for literal braces)"
                )
            if spec or conv:
                raise ConfigError(
                    f"sft.template: placeholder {{{fname}}} takes no format spec or conversion"
                )
            names.append(fname)
    except ValueError as e:
        raise ConfigError(
            f"sft.template: not a valid format string ({e}); write {{{{ }}}} for literal braces"
        ) from None
    if "instruction" not in names:
        raise ConfigError(
            f"sft.template: {value!r} is neither a named template ({', '.join(TEMPLATES)}) "
            "nor a format string with {instruction}"
        )
    return PromptTemplate(name="custom", prompt=value, prompt_with_input=value)


def template_record(t: PromptTemplate) -> dict[str, Any]:
    """What the run folder's ``template.json`` holds (read by ``lmlab chat``)."""
    return {
        "prompt": t.chat_prompt(),
        "stop": list(t.stop),
        "name": t.name,
        "template": t.prompt if t.name == "custom" else t.name,
        "prompt_with_input": t.prompt_with_input,
    }
