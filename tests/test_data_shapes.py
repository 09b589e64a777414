"""Users' data shapes wherever a stage reads data (issue 22, point 5), without a model: GSM8K, MATH and OpenR1
files (tests/data_shapes.py) through the loaders, `r1 make-data`, the cold start's demonstrations and the
`r1 eval --data` flags. The same files go through the stages themselves in tests/test_data_shapes_e2e.py."""
from __future__ import annotations

import json
import logging

import pytest

from pipeline.config import ConfigError, SourceSpec, load_config
from pipeline.data import build_splits, cold_start_examples, eval_samples, write_datasets
from tasks.answer_patterns import last_boxed
from tasks.loaders import load_demonstrations, load_samples
from tests.data_shapes import GOLD, write_fixtures

GSM8K_REGEX = r"####\s*(.+)$"
SYSTEM = "Think, then answer."


@pytest.fixture()
def files(tmp_path):
    return write_fixtures(tmp_path / "data")


def _cfg(*overrides):
    # No synthetic tasks and no general tasks: only the users' data is in play.
    return load_config(None, ["data.tasks=[]", "general_rl.general_tasks=[]", f"data.system_prompt={SYSTEM}",
                              *overrides])


def _sources(*entries):
    return "data.sources=[" + ", ".join(entries) + "]"


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- the three shapes load

@pytest.mark.parametrize("pattern", ["gsm8k", GSM8K_REGEX])
def test_gsm8k_shape_prompt_from_question_answer_after_the_hashes(files, pattern):
    samples = load_samples(files["gsm8k"], prompt_field="question", answer_pattern=pattern)
    assert [s["answer"] for s in samples] == GOLD["gsm8k"]  # "#### 1,234" -> "1234"
    assert samples[0]["prompt"].startswith("Tom has 3 apples")
    assert set(samples[0]) == {"id", "task", "prompt", "answer"}  # the question column became the prompt
    assert samples[0]["id"] == "gsm8k-train-000000"


def test_math_shape_gold_is_the_last_boxed_content_and_the_solution_stays(files):
    samples = load_samples(files["math"], prompt_field="problem", answer_field="solution", answer_pattern="boxed")
    assert [s["answer"] for s in samples] == GOLD["math"]  # nested braces: \frac{1}{2}
    assert "\\boxed{8}" in samples[1]["solution"]  # the worked steps, for the cold start
    assert samples[0]["level"] == "Level 1" and samples[0]["type"] == "Prealgebra"  # scalar columns kept
    demos = load_demonstrations(files["math"], prompt_field="problem", answer_field="solution",
                                answer_pattern="boxed", system_prompt=SYSTEM)
    assert [d["id"] for d in demos] == [s["id"] for s in samples]
    system, user, assistant = demos[0]["messages"]
    assert system == {"role": "system", "content": SYSTEM} and user["content"] == samples[0]["prompt"]
    assert assistant["content"].startswith("<think>\n") and assistant["content"].endswith(
        "<answer>\n\\frac{1}{2}\n</answer>")


def test_openr1_shape_keeps_scalars_leaves_out_lists_and_messages(files, caplog):
    with caplog.at_level(logging.INFO, logger="r1.data"):
        samples = load_samples(files["openr1"], prompt_field="problem", messages_field="messages")
    assert [s["answer"] for s in samples] == GOLD["openr1"]
    assert set(samples[0]) == {"id", "task", "prompt", "answer", "uuid"}
    dropped = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(dropped) == 1  # named once per source, not once per row
    for name in ("correctness_math_verify", "generations", "messages"):
        assert name in dropped[0]


def test_columns_keep_exactly_what_is_listed_or_all_but_never_the_messages(files):
    options = {"prompt_field": "problem", "messages_field": "messages"}
    listed = load_samples(files["openr1"], columns=["generations"], **options)
    assert set(listed[0]) == {"id", "task", "prompt", "answer", "generations"}  # uuid not listed: left out
    assert len(listed[0]["generations"]) == 2
    everything = load_samples(files["openr1"], columns="all", **options)
    assert set(everything[0]) == {"id", "task", "prompt", "answer", "uuid", "generations", "correctness_math_verify"}
    only_schema = load_samples(files["openr1"], columns=[], **options)
    assert set(only_schema[0]) == {"id", "task", "prompt", "answer"}
    with pytest.raises(ValueError, match=r"openr1\.jsonl: columns 'genrations' in no row; rows have fields: .*"
                                         r"generations"):
        load_samples(files["openr1"], columns=["genrations"], **options)


def test_openr1_demonstrations_are_its_messages_after_the_system_prompt(files):
    demos = load_demonstrations(files["openr1"], prompt_field="problem", messages_field="messages",
                                system_prompt=SYSTEM)
    assert len(demos) == 4 and demos[0]["id"] == "openr1-train-000000"
    system, user, assistant = demos[0]["messages"]
    assert system["content"] == SYSTEM and user["content"] == "What is 5 + 6?"
    assert assistant["content"].startswith("<think>") and "\\boxed{11}" in assistant["content"]
    # No messages_field: the OpenR1 rows have no solution either, so they make no demonstration.
    assert load_demonstrations(files["openr1"], prompt_field="problem") == []


def test_last_boxed_handles_nesting_escapes_and_absence():
    assert last_boxed("so $\\boxed{\\frac{1}{2}}$") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{1} then \\boxed {2}") == "2"
    assert last_boxed("\\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"
    assert last_boxed("\\boxed{unclosed") is None and last_boxed("no box") is None


# ----------------------------------------------------------------------------- bad input: one line each

def test_bad_rows_are_one_line_naming_file_field_and_row(tmp_path, files):
    with pytest.raises(ValueError) as error:
        load_samples(files["gsm8k"], prompt_field="problem")
    assert str(error.value) == (f"{files['gsm8k']}: field 'problem' (prompt_field) missing in row 1; "
                                "row has fields: question, answer")
    no_hashes = tmp_path / "g.jsonl"
    no_hashes.write_text(json.dumps({"question": "q", "answer": "#### 3"}) + "\n"
                         + json.dumps({"question": "q2", "answer": "just 4"}) + "\n")
    with pytest.raises(ValueError) as error:
        load_samples(no_hashes, prompt_field="question", answer_pattern="gsm8k")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{no_hashes}: answer_pattern 'gsm8k' finds no answer in "
                                                      "field 'answer' (answer_field) of row 2")
    no_box = tmp_path / "m.jsonl"
    no_box.write_text(json.dumps({"problem": "p", "solution": "the answer is 3"}) + "\n")
    with pytest.raises(ValueError, match=r"m\.jsonl: answer_pattern 'boxed' finds no answer in field 'solution' "
                                         r"\(answer_field\) of row 1"):
        load_samples(no_box, prompt_field="problem", answer_field="solution", answer_pattern="boxed")
    bad_chat = tmp_path / "c.jsonl"
    bad_chat.write_text(json.dumps({"problem": "p", "answer": "1", "messages": [{"role": "user", "content": "p"}]})
                        + "\n")
    with pytest.raises(ValueError, match=r"c\.jsonl: row 1: the last message must be the assistant's"):
        load_demonstrations(bad_chat, prompt_field="problem", messages_field="messages")


@pytest.mark.parametrize("override, must_contain", [
    ("data.sources=[{path: x.jsonl, answer_pattern: '####'}]", ["data.sources.0.answer_pattern", "capture group",
                                                               "boxed, gsm8k"]),
    ("data.sources=[{path: x.jsonl, columns: generations}]", ["data.sources.0.columns", "list of column names"]),
    ("cold_start.data={path: x.jsonl, role: train}", ["cold_start.data", "unknown key 'role'", "messages_field"]),
    ("cold_start.data={messages_field: m}", ["cold_start.data", "'path' is required"]),
    ("cold_start.data=[a.jsonl]", ["cold_start.data", "a chat file (a string) or a source mapping"]),
])
def test_bad_source_options_are_one_config_line(override, must_contain):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    message = str(error.value)
    assert "\n" not in message
    for part in must_contain:
        assert part in message, (part, message)


# ----------------------------------------------------------------------------- make-data and the cold start

GSM8K_SOURCE = "{path: %s, prompt_field: question, answer_pattern: gsm8k, task: gsm8k}"
MATH_SOURCE = "{path: %s, prompt_field: problem, answer_field: solution, answer_pattern: boxed, task: math}"
OPENR1_SOURCE = "{path: %s, prompt_field: problem, messages_field: messages, task: openr1}"


def test_make_data_on_a_source_without_solutions_writes_its_rows_and_no_demos(files, tmp_path, caplog):
    # Before the fix: `r1 make-data` stopped with "sample gsm8k-train-000000: no 'solution' to put in the
    # think block" (every train row was made a demonstration), so no cold_start.jsonl was written.
    cfg = _cfg(_sources(GSM8K_SOURCE % files["gsm8k"]))
    with caplog.at_level(logging.WARNING, logger="r1.data"):
        paths = write_datasets(cfg, tmp_path / "out")
    assert [s["answer"] for s in _read(paths["train"])] == GOLD["gsm8k"]
    assert _read(paths["cold_start"]) == []
    assert any("cold_start.jsonl: no demonstrations" in r.getMessage() and str(files["gsm8k"]) in r.getMessage()
               for r in caplog.records)


def test_make_data_demos_come_from_what_has_them(files, tmp_path):
    cfg = _cfg(_sources(GSM8K_SOURCE % files["gsm8k"], MATH_SOURCE % files["math"], OPENR1_SOURCE % files["openr1"],
                        "{path: %s, prompt_field: question, answer_pattern: gsm8k, task: gsm8k_test, role: test}"
                        % files["gsm8k"]))
    paths = write_datasets(cfg, tmp_path / "out")
    train, test, demos = (_read(paths[name]) for name in ("train", "test", "cold_start"))
    assert [s["answer"] for s in train] == GOLD["gsm8k"] + GOLD["math"] + GOLD["openr1"]
    assert [s["answer"] for s in test] == GOLD["gsm8k"] and {s["task"] for s in test} == {"gsm8k_test"}
    assert not any("messages" in s or "generations" in s for s in train)  # reward rows stay small
    assert [d["task"] for d in demos] == ["math"] * 4 + ["openr1"] * 4  # GSM8K rows make none
    assert all(d["messages"][0] == {"role": "system", "content": SYSTEM} for d in demos)
    # The cold start trains on exactly these; RL on the same train rows.
    assert cold_start_examples(cfg) == demos
    assert build_splits(cfg)[0] == train


def test_a_cold_start_without_demonstrations_fails_in_one_line_naming_source_and_fields(files):
    cfg = _cfg(_sources(GSM8K_SOURCE % files["gsm8k"]))
    with pytest.raises(ValueError) as error:
        cold_start_examples(cfg)
    message = str(error.value)
    assert "\n" not in message
    for part in ("no demonstrations", f"data.sources[0] {files['gsm8k']}", "messages_field (not set)",
                 "'solution'", "cold_start.data"):
        assert part in message, (part, message)
    openr1_without_field = _cfg(f"cold_start.data={{path: {files['openr1']}, prompt_field: problem}}")
    with pytest.raises(ValueError, match=rf"^cold_start\.data {files['openr1']}: no demonstrations: no row has "
                                         r"messages_field \(not set\) or a 'solution' field$"):
        cold_start_examples(openr1_without_field)


def test_cold_start_data_as_a_chat_file_or_a_source(files, tmp_path):
    # A source mapping: the OpenR1 messages, after the system prompt the RL stage will use.
    source = _cfg(f"cold_start.data={{path: {files['openr1']}, messages_field: messages, limit: 2}}")
    examples = cold_start_examples(source)
    assert len(examples) == 2 and examples[0]["messages"][0]["content"] == SYSTEM
    assert "\\boxed{11}" in examples[0]["messages"][-1]["content"]
    # A MATH file as the cold start's source: demonstrations from its solutions.
    math = _cfg(f"cold_start.data={{path: {files['math']}, prompt_field: problem, answer_field: solution, "
                "answer_pattern: boxed}")
    assert [e["messages"][-1]["content"].rsplit("<answer>\n", 1)[1] for e in cold_start_examples(math)] == [
        f"{gold}\n</answer>" for gold in GOLD["math"]]
    # A string, as before sources: a chat file with `messages`, used as it is.
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    [example] = cold_start_examples(_cfg(f"cold_start.data={chat}"))
    assert [m["role"] for m in example["messages"]] == ["user", "assistant"]


# ----------------------------------------------------------------------------- `r1 eval --data` flags

def _eval_args(*argv):
    from pipeline.cli import _eval_data, build_parser

    return _eval_data(build_parser().parse_args(["eval", *argv]))


def test_eval_flags_map_onto_the_source(files):
    source = _eval_args("--data", str(files["gsm8k"]), "--prompt-field", "question", "--answer-pattern",
                        GSM8K_REGEX, "--columns", "a, b", "--task", "gsm", "--limit", "3", "--split", "test",
                        "--subset", "main", "--messages-field", "chat", "--answer-field", "answer")
    assert source == SourceSpec(path=str(files["gsm8k"]), prompt_field="question", answer_pattern=GSM8K_REGEX,
                                columns=["a", "b"], task="gsm", limit=3, split="test", subset="main",
                                messages_field="chat", answer_field="answer")
    assert _eval_args("--data", "x.jsonl") == SourceSpec(path="x.jsonl")  # defaults as in data.sources
    assert _eval_args("--data", "x.jsonl", "--columns", "all").columns == "all"
    assert _eval_args("--data", "x.jsonl", "--columns", "").columns == []
    assert _eval_args("--data", "x.jsonl", "--answer-field", "null").answer_field is None
    assert _eval_args() is None  # no --data: the config's held-out split


def test_eval_flags_read_the_gsm8k_file_and_bad_flags_are_one_line(files):
    source = _eval_args("--data", str(files["gsm8k"]), "--prompt-field", "question", "--answer-pattern", GSM8K_REGEX)
    rows = eval_samples(_cfg(), source)
    assert [r["answer"] for r in rows] == GOLD["gsm8k"] and rows[0]["prompt"].startswith("Tom has")
    with pytest.raises(ConfigError, match=r"^r1 eval --answer-pattern='#\+': needs one capture group"):
        _eval_args("--data", "x.jsonl", "--answer-pattern", "#+")
    with pytest.raises(ConfigError, match=r"^r1 eval: --prompt-field map the columns of --data FILE; give --data$"):
        _eval_args("--prompt-field", "question")
    # Without the flags a GSM8K file is refused in one line that says which field is missing.
    with pytest.raises(ValueError, match=r"field 'prompt' \(prompt_field\) missing in row 1; row has fields: "
                                         r"question, answer"):
        eval_samples(_cfg(), _eval_args("--data", str(files["gsm8k"])))
