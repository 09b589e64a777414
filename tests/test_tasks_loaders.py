"""tasks.loaders and tasks.storage: user data into the schema, clear errors, file round trips."""
from __future__ import annotations

import json

import pytest

import tasks
from tasks import build, load_chat_samples, load_samples, read_jsonl, to_hf_dataset, write_jsonl, write_parquet


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture()
def qa_file(tmp_path):
    rows = [{"q": "What is 2 + 2?", "a": 4, "source": "book"},
            {"q": "Half of 3?", "a": "3/2", "source": "book"},
            {"q": "What is 0.5 + 0.25?", "a": 0.75, "source": "web"}]
    return write_jsonl(rows, tmp_path / "my_math.jsonl")


@pytest.fixture(scope="module")
def mixed_samples():
    return build({"arithmetic": 4, "word_problem": 4, "countdown": 4, "linear_equation": 4, "instruction": 4},
                 seed=1, split="train")


# ----------------------------------------------------------------------------- field mapping

def test_user_field_names_map_onto_the_schema(qa_file):
    samples = load_samples(qa_file, prompt_field="q", answer_field="a")
    assert samples[0] == {"id": "my_math-train-000000", "task": "my_math", "prompt": "What is 2 + 2?",
                          "answer": "4", "source": "book"}
    assert [s["answer"] for s in samples] == ["4", "3/2", "0.75"]
    assert [s["id"] for s in samples] == [f"my_math-train-{i:06d}" for i in range(3)]
    named = load_samples(qa_file, prompt_field="q", answer_field="a", task="gsm", split="test", limit=2)
    assert [s["id"] for s in named] == ["gsm-test-000000", "gsm-test-000001"]
    assert all(s["task"] == "gsm" for s in named)


def test_existing_ids_and_tasks_are_kept_and_extra_fields_renamed(tmp_path):
    path = write_jsonl([{"id": 7, "task": "cd", "prompt": "Make 10", "answer": "2*5", "nums": [2, 5],
                         "tgt": 10, "verifier": "countdown"}], tmp_path / "cd.jsonl")
    [sample] = load_samples(path, task="ignored", fields={"nums": "numbers", "tgt": "target"})
    assert sample["id"] == "7" and sample["task"] == "cd"
    assert sample["numbers"] == [2, 5] and sample["target"] == 10
    assert "nums" not in sample and "tgt" not in sample


def test_missing_prompt_field_error_names_file_field_row_and_present_fields(tmp_path):
    path = write_jsonl([{"question": "a", "answer": "1"}, {"question": "b", "answer": "2"},
                        {"q": "c", "a": "3"}], tmp_path / "my.jsonl")
    with pytest.raises(ValueError) as error:
        load_samples(path, prompt_field="question")
    assert str(error.value) == (
        f"{path}: field 'question' (prompt_field) missing in row 3; row has fields: q, a"
    )


def test_missing_answer_is_an_error_unless_not_needed(tmp_path):
    path = write_jsonl([{"prompt": "Say hi"}], tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match=r"field 'answer' \(answer_field\) missing in row 1; row has fields: "
                                         r"prompt; pass answer_field=None"):
        load_samples(path)
    assert "answer" not in load_samples(path, answer_field=None)[0]
    instruction = write_jsonl([{"prompt": "Say hi", "verifier": "instruction",
                                "constraints": [{"kind": "lowercase"}]}], tmp_path / "i.jsonl")
    assert load_samples(instruction)[0]["constraints"] == [{"kind": "lowercase"}]


def test_missing_renamed_field_and_bad_values_are_reported(tmp_path):
    path = write_jsonl([{"prompt": "x", "answer": "1", "nums": [1]}], tmp_path / "f.jsonl")
    with pytest.raises(ValueError, match=r"field 'tgt' \(fields\['tgt'\]\) missing in row 1"):
        load_samples(path, fields={"tgt": "target"})
    empty = write_jsonl([{"prompt": "  ", "answer": "1"}], tmp_path / "e.jsonl")
    with pytest.raises(ValueError, match=r"field 'prompt' \(prompt_field\) in row 1 must be a non-empty string"):
        load_samples(empty)
    listed = write_jsonl([{"prompt": "p", "answer": [1, 2]}], tmp_path / "l.jsonl")
    with pytest.raises(ValueError, match=r"field 'answer' \(answer_field\) in row 1 must be a string or a number"):
        load_samples(listed)
    twice = write_jsonl([{"id": "a", "prompt": "p", "answer": "1"}, {"id": "a", "prompt": "q", "answer": "2"}],
                        tmp_path / "d.jsonl")
    with pytest.raises(ValueError, match=r"id 'a' appears in rows 1 and 2"):
        load_samples(twice)


# ----------------------------------------------------------------------------- files

def test_bad_json_line_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", ['{"prompt": "a", "answer": "1"}', "", '{"prompt": "b", "answer":'])
    with pytest.raises(ValueError, match=rf"^{path}:3: invalid JSON: "):
        read_jsonl(path)
    with pytest.raises(ValueError, match=rf"^{path}:3: invalid JSON"):
        load_samples(path)
    not_object = write_lines(tmp_path / "list.jsonl", ['{"prompt": "a"}', "[1, 2]"])
    with pytest.raises(ValueError, match=rf"^{not_object}:2: expected a JSON object, got list"):
        read_jsonl(not_object)


def test_jsonl_round_trip_keeps_samples_exactly(tmp_path, mixed_samples):
    path = write_jsonl(mixed_samples, tmp_path / "deep" / "train.jsonl")
    assert read_jsonl(path) == mixed_samples
    assert load_samples(path) == mixed_samples
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left nothing behind


def test_json_files_as_array_data_object_or_lines(tmp_path):
    rows = [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}]
    (tmp_path / "arr.json").write_text(json.dumps(rows))
    (tmp_path / "obj.json").write_text(json.dumps({"data": rows}))
    write_lines(tmp_path / "lines.json", [json.dumps(r) for r in rows])
    for name in ("arr.json", "obj.json", "lines.json"):
        assert [s["prompt"] for s in load_samples(tmp_path / name)] == ["a", "b"], name
    (tmp_path / "scalar.json").write_text("42")
    with pytest.raises(ValueError, match="expected a JSON array of objects"):
        load_samples(tmp_path / "scalar.json")


def test_parquet_round_trip_of_mixed_tasks(tmp_path, mixed_samples):
    path = write_parquet(mixed_samples, tmp_path / "train.parquet")
    assert load_samples(path) == mixed_samples
    # Through a datasets.Dataset too: the variable-shaped fields come back as they were.
    dataset = to_hf_dataset(mixed_samples)
    assert len(dataset) == len(mixed_samples)
    assert isinstance(dataset[0]["prompt"], str)
    dataset.to_parquet(str(tmp_path / "hf.parquet"))
    assert load_samples(tmp_path / "hf.parquet") == mixed_samples
    dataset.save_to_disk(str(tmp_path / "saved"))
    assert load_samples(tmp_path / "saved", limit=3) == mixed_samples[:3]


def test_unreadable_sources_give_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r"missing\.jsonl: file not found"):
        load_samples(tmp_path / "missing.jsonl")
    (tmp_path / "data.csv").write_text("prompt,answer\na,1\n")
    with pytest.raises(ValueError, match=r"unsupported file type '\.csv'; use \.jsonl, \.json or \.parquet"):
        load_samples(tmp_path / "data.csv")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        load_samples(tmp_path / "broken.parquet")


# ----------------------------------------------------------------------------- hub path

def test_hub_failure_is_one_clear_line(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/math' on the Hub\n(LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError) as error:
        load_samples("someone/math", split="test")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("someone/math: not a local file and could not be loaded from the Hugging Face Hub "
                              "(split 'test'): ConnectionError: Couldn't reach")


def test_hub_rows_are_mapped_like_files(monkeypatch):
    import datasets

    calls = []

    def fake_load(dataset_id, subset=None, *, split):
        calls.append((dataset_id, subset, split))
        return datasets.Dataset.from_list([{"question": f"q{i}", "answer": str(i)} for i in range(5)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    samples = load_samples("openai/gsm8k", prompt_field="question", split="test", limit=2, subset="main")
    assert calls == [("openai/gsm8k", "main", "test")]
    assert samples == [{"id": "gsm8k-test-000000", "task": "gsm8k", "prompt": "q0", "answer": "0"},
                       {"id": "gsm8k-test-000001", "task": "gsm8k", "prompt": "q1", "answer": "1"}]


# ----------------------------------------------------------------------------- chat data

def test_chat_rows_load_and_keep_extra_fields(tmp_path):
    demos = tasks.make_demonstrations(build({"arithmetic": 3}, seed=0), system_prompt="Reason first.")
    path = write_jsonl(demos, tmp_path / "sft.jsonl")
    loaded = load_chat_samples(path)
    assert loaded == demos
    renamed = write_jsonl([{"conversation": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello", "weight": 1}]}],
                          tmp_path / "chat.jsonl")
    [sample] = load_chat_samples(renamed, messages_field="conversation")
    assert sample == {"id": "chat-train-000000", "task": "chat",
                      "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.parametrize("messages,expected", [
    ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}],
     r"row 1: message 1 has role 'bot'; roles must be one of system, user, assistant"),
    ([{"role": "user", "content": "hi"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
     r"row 1: message 1: a system message may only come first"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}],
     r"row 1: message 1 \(role 'assistant'\) must have non-empty string content"),
    ([{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}],
     r"row 1: message 1 has role 'user' where 'assistant' was expected"),
    ([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
     r"row 1: the last message must be the assistant's"),
    ([{"role": "user"}], r"row 1: message 0 must be an object with 'role' and 'content'"),
    ([], r"row 1: messages must be a non-empty list"),
])
def test_chat_validation_errors(tmp_path, messages, expected):
    path = write_jsonl([{"messages": messages}], tmp_path / "chat.jsonl")
    with pytest.raises(ValueError, match=expected):
        load_chat_samples(path)


def test_chat_missing_messages_field(tmp_path):
    path = write_jsonl([{"prompt": "hi"}], tmp_path / "chat.jsonl")
    with pytest.raises(ValueError, match=r"field 'messages' \(messages_field\) missing in row 1; row has fields: prompt"):
        load_chat_samples(path)
