"""Turning a sample into the exact prompt token ids the engine and the trainer both see."""
from __future__ import annotations

from typing import Mapping


def chat_messages(sample: Mapping, system_prompt: str | None) -> list[dict]:
    """System prompt (if any) plus the sample's user prompt, as chat messages."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": str(sample["prompt"])})
    return messages


def render_prompt_text(tokenizer, sample: Mapping, system_prompt: str | None) -> str:
    """The chat-templated prompt text, ending where the assistant's turn begins.

    The template is applied exactly once here; ids come from tokenizing this text without adding special
    tokens again (a second BOS is a classic silent bug).
    """
    messages = chat_messages(sample, system_prompt)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # A base model without a chat template: a plain R1-Zero style transcript.
    system = f"{system_prompt}\n" if system_prompt else ""
    return f"{system}User: {sample['prompt']}\nAssistant:"


def render_prompt_ids(tokenizer, sample: Mapping, system_prompt: str | None) -> list[int]:
    """Token ids of :func:`render_prompt_text`."""
    text = render_prompt_text(tokenizer, sample, system_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def template_prefills_think(tokenizer, system_prompt: str | None) -> bool:
    """True if the chat template itself opens ``<think>`` (then completions start inside the think block)."""
    text = render_prompt_text(tokenizer, {"prompt": "1+1?"}, system_prompt)
    return text.rstrip().endswith("<think>")


def render_sft_pair(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) of a chat example whose last message is the assistant's reply.

    The template is applied once to the whole conversation and split where the assistant's turn begins,
    so the target carries the template's own end-of-turn token (the model learns to stop) and the prompt
    is byte-for-byte what generation will later see.
    """
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("an SFT example's last message must have role 'assistant'")
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("chat template renders the prompt differently inside the full conversation; "
                             "cannot split prompt from target")
        target = full[len(prompt):]
    else:
        prompt = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages[:-1]) + "Assistant:"
        target = " " + messages[-1]["content"] + (tokenizer.eos_token or "")
    return (tokenizer(prompt, add_special_tokens=False)["input_ids"],
            tokenizer(target, add_special_tokens=False)["input_ids"])
