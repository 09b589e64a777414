"""Turning a sample into the exact prompt token ids the engine and the trainer both see.

``data.template`` says how a prompt is laid out (:data:`TEMPLATES`):

- ``chat``: the tokenizer's chat template with ``data.system_prompt`` as the system message (a tokenizer
  without one: a plain ``User: ... Assistant:`` transcript after the system prompt);
- ``r1_zero``: the R1 paper's R1-Zero template (:data:`R1_ZERO_TEMPLATE`) as the raw prompt text, no chat
  template and no system prompt, on any model;
- ``r1_zero_chat``: that transcript as the user turn of the chat template (no system message of ours: the
  template's default one, if it has one, stays), ending where the assistant's turn begins; on a tokenizer
  without a chat template, the same as ``r1_zero``.

Data stays template-neutral (chat messages with the system prompt, :func:`chat_messages`); the template is
applied here, once, wherever a prompt or an SFT example is rendered.
"""
from __future__ import annotations

from typing import Mapping

TEMPLATES = ("chat", "r1_zero", "r1_zero_chat")

# DeepSeek-R1 paper, Table 1 ("prompt will be replaced with the specific reasoning question during training").
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: {prompt}. Assistant:"
)


def check_template(template: str) -> None:
    """Raise ``ValueError`` (one line, the accepted values) unless ``template`` is a known template."""
    if template not in TEMPLATES:
        raise ValueError(f"template={template!r}: expected one of {', '.join(TEMPLATES)}")


def r1_zero_transcript(prompt: str) -> str:
    """The R1-Zero template filled with ``prompt``."""
    return R1_ZERO_TEMPLATE.format(prompt=prompt)


def chat_messages(sample: Mapping, system_prompt: str | None) -> list[dict]:
    """System prompt (if any) plus the sample's user prompt, as chat messages."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": str(sample["prompt"])})
    return messages


def _raw(tokenizer, template: str) -> bool:
    # The R1-Zero transcript as plain text: asked for, or asked inside a chat template the tokenizer lacks.
    check_template(template)
    return template == "r1_zero" or (template == "r1_zero_chat" and not getattr(tokenizer, "chat_template", None))


def _the_question(messages: list[dict]) -> str:
    """The one user turn of a conversation (system turns aside): what the R1-Zero transcript wraps."""
    users = [m for m in messages if m.get("role") == "user"]
    if len(users) != 1 or any(m.get("role") not in ("system", "user") for m in messages):
        raise ValueError("the R1-Zero templates take a system turn (ignored) and one user turn; got roles "
                         f"{[m.get('role') for m in messages]}")
    return str(users[0]["content"])


def render_prompt_text(tokenizer, sample: Mapping, system_prompt: str | None, template: str = "chat") -> str:
    """The templated prompt text, ending where the assistant's turn begins (``template``: see the module).

    The template is applied exactly once here; ids come from tokenizing this text without adding special
    tokens again (a second BOS is a classic silent bug).
    """
    if _raw(tokenizer, template):
        return r1_zero_transcript(str(sample["prompt"]))
    if template == "r1_zero_chat":
        messages = [{"role": "user", "content": r1_zero_transcript(str(sample["prompt"]))}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    messages = chat_messages(sample, system_prompt)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # A base model without a chat template: a plain transcript after the system prompt.
    system = f"{system_prompt}\n" if system_prompt else ""
    return f"{system}User: {sample['prompt']}\nAssistant:"


def render_prompt_ids(tokenizer, sample: Mapping, system_prompt: str | None, template: str = "chat") -> list[int]:
    """Token ids of :func:`render_prompt_text`."""
    text = render_prompt_text(tokenizer, sample, system_prompt, template)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def template_prefills_think(tokenizer, system_prompt: str | None, template: str = "chat") -> bool:
    """True if the rendered prompt itself opens ``<think>`` (then completions start inside the think block)."""
    text = render_prompt_text(tokenizer, {"prompt": "1+1?"}, system_prompt, template)
    return text.rstrip().endswith("<think>")


def render_sft_pair(tokenizer, messages: list[dict], template: str = "chat") -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) of a chat example whose last message is the assistant's reply.

    The template is applied once to the whole conversation and split where the assistant's turn begins,
    so the target carries the template's own end-of-turn token (the model learns to stop) and the prompt
    is byte-for-byte what generation will later see (under ``r1_zero``: the transcript of the one user turn).
    """
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("an SFT example's last message must have role 'assistant'")
    reply, raw = messages[-1], _raw(tokenizer, template)
    if template != "chat":  # the R1-Zero transcript of the one user turn, raw or as the chat's user turn
        transcript = r1_zero_transcript(_the_question(messages[:-1]))
        messages = [{"role": "user", "content": transcript}, reply]
    if raw:
        prompt = transcript
        target = " " + reply["content"] + (tokenizer.eos_token or "")
    elif getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("chat template renders the prompt differently inside the full conversation; "
                             "cannot split prompt from target")
        target = full[len(prompt):]
    else:  # the plain transcript of render_prompt_text: the system prompt as a bare first line
        prompt = "".join(f"{m['content']}\n" if m["role"] == "system" else f"{m['role'].capitalize()}: {m['content']}\n"
                         for m in messages[:-1]) + "Assistant:"
        target = " " + reply["content"] + (tokenizer.eos_token or "")
    return (tokenizer(prompt, add_special_tokens=False)["input_ids"],
            tokenizer(target, add_special_tokens=False)["input_ids"])
