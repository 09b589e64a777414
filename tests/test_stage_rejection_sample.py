"""Stage 3 around the engine: verdicts on every completion, the dataset SFT reads, statistics, nothing lost.
The engine is a scripted stand-in (the real one has its own tests); the verifiers and filters are real."""
import json

from pipeline.sft import read_chat_examples
from rollout.types import Completion, Generation, SamplingSpec
from stages.rejection_filters import FilterSettings
from stages.rejection_sample import build_dataset, sample_candidates, to_chat_example, write_dataset
from stages.sft import tokenize_examples

RIGHT = "<think>\n3 + 4 = 7\n</think>\n<answer>\n7\n</answer>"
RIGHT_AGAIN = "<think>\n3  +  4 = 7\n</think>\n<answer>\n7\n</answer>"  # a duplicate once whitespace is normalised
WRONG = "<think>\n3 + 4 = 8\n</think>\n<answer>\n8\n</answer>"
LOOP = "<think>\n" + "add the numbers now " * 30 + "\n</think>\n<answer>\n7\n</answer>"


class Scripted:
    def __init__(self, texts):
        self.texts = texts

    def generate(self, prompts, sampling, progress=False):
        return [Generation(prompt_ids=list(p), completions=[
            Completion(text=t, token_ids=[1] * 5, logprobs=None, finish_reason="stop") for t in self.texts])
            for p in prompts]


SAMPLES = [{"id": f"arithmetic-train-{i}", "task": "arithmetic", "prompt": f"What is 3 + 4? ({i})", "answer": "7",
            "verifier": "accuracy"} for i in range(3)]


def test_candidates_dataset_and_stats(smollm2_tokenizer, tmp_path):
    engine = Scripted([RIGHT, RIGHT_AGAIN, WRONG, LOOP])
    candidates = sample_candidates(engine, smollm2_tokenizer, SAMPLES, system_prompt="sys",
                                   sampling=SamplingSpec(n=4), progress=False)
    assert len(candidates) == 12 and sum(c["correct"] for c in candidates) == 9
    general = [{"id": f"instruction-{i}", "task": "instruction",
                "messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]}
               for i in range(10)]
    rows, stats = build_dataset(candidates, general, FilterSettings(max_per_prompt=2), ratio=0.25, seed=0,
                                system_prompt="sys")
    assert stats["kept_reasoning"] == 3  # one per prompt: the duplicate and the loop are rejected
    assert stats["rejection_reasons"] == {"incorrect": 3, "duplicate": 3, "repetition": 3}
    assert stats["non_reasoning"] == 1 and stats["rows"] == 4
    assert stats["acceptance"]["arithmetic"]["acceptance_rate"] == 0.25
    path = write_dataset(tmp_path, rows, candidates, stats)
    examples = read_chat_examples(str(path), field="sft.data")
    assert len(examples) == 4
    reasoning = [e for e in examples if e["task"] == "arithmetic"]
    assert reasoning[0]["messages"][0] == {"role": "system", "content": "sys"}
    assert reasoning[0]["messages"][-1]["content"] == RIGHT
    pairs, skipped = tokenize_examples(smollm2_tokenizer, examples, 1024)
    assert len(pairs) == 4 and skipped == {"too_long": 0, "malformed": 0}
    lines = (tmp_path / "candidates.jsonl").read_text().splitlines()
    assert len(lines) == 12  # every completion is on disk with its verdict
    assert json.loads((tmp_path / "stats.json").read_text())["candidates"] == 12


def test_prefilled_think_is_restored_in_the_training_example():
    cand = {"sample": SAMPLES[0], "completion": "3 + 4 = 7\n</think>\n<answer>\n7\n</answer>"}
    example = to_chat_example(cand, system_prompt=None, prefilled_think=True, index=1)
    assert example["messages"][-1]["content"].startswith("<think>\n3 + 4")
    assert example["id"] == "arithmetic-train-0#1" and len(example["messages"]) == 2
