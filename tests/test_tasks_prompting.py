"""The prompt is templated once, with the system prompt, and ends at the assistant turn."""
import pytest

from pipeline.config import R1_SYSTEM_PROMPT
from tasks.prompting import render_prompt_ids, render_prompt_text, template_prefills_think


class PlainTokenizer:
    """A tokenizer without a chat template (a base model)."""

    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


def test_base_model_without_template_gets_r1_zero_transcript():
    text = render_prompt_text(PlainTokenizer(), {"prompt": "2+2?"}, "SYS")
    assert text == "SYS\nUser: 2+2?\nAssistant:"
    assert render_prompt_ids(PlainTokenizer(), {"prompt": "2+2?"}, None) == [ord(c) for c in "User: 2+2?\nAssistant:"]


@pytest.mark.slow
def test_chat_template_applied_once(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ids = render_prompt_ids(tok, {"prompt": "What is 2+2?"}, R1_SYSTEM_PROMPT)
    text = tok.decode(ids)
    assert text.count("<|im_start|>system") == 1  # our system prompt replaces the template's default
    assert "SmolLM" not in text
    assert text.count("What is 2+2?") == 1
    assert text.endswith("<|im_start|>assistant\n")
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert not template_prefills_think(tok, R1_SYSTEM_PROMPT)
