"""`r1 score`: users' rewards (TRL, verl, async, a plugin) in a folder outside the repo score a JSONL file of
completions; bad rows and a reward that always fails stop it in one line. The console script runs as a user
runs it: `.venv/bin/r1` with the user's folder as the working directory."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.score import chunk_bounds, default_out_path, read_rows, score_file, summary_table
from tests.user_reward_modules import write_user_reward_modules

ROOT = Path(__file__).resolve().parents[1]
R1 = str(Path(sys.executable).with_name("r1"))

# Three rows whose scores follow from tests/user_reward_modules.py's definitions:
#   think_closed: "</think>" in the completion; answer_mentioned: str(answer) in it, arithmetic rows only
#   (None elsewhere); compute_score: the gold's first digit in it; judged_length(limit=60): 0 < len <= 60;
#   judged_batch: min(1, len / 100); has_think (a plugin's @register): "<think>" or "</think>" in it.
ROWS = [
    {"id": "a-1", "task": "arithmetic", "prompt": "6*7?", "answer": "42", "extra": [1, 2],
     "completion": "<think>6*7</think><answer>42</answer>"},                      # 37 chars
    {"id": "w-1", "task": "word_problem", "prompt": "Tom has 17 apples...", "answer": "17",
     "completion": "<think>hmm"},                                                   # 10 chars
    {"id": "a-2", "task": "arithmetic", "prompt": "4+5?", "answer": "9", "completion": "x" * 100},
]
ITEMS = [
    {"name": "my_trl_rewards:think_closed", "weight": 1.0},
    {"name": "my_trl_rewards:answer_mentioned", "weight": 2.0},
    {"name": "my_verl_rewards:compute_score", "weight": 0.5},
    {"name": "my_async_rewards:judged_length", "weight": 1.0, "options": {"limit": 60}},
    {"name": "my_async_rewards:judged_batch", "weight": 1.0},
    {"name": "has_think", "weight": 0.25},
]
EXPECTED = {  # label -> (value, reason) per row; "not_applicable" parts add nothing to the total
    "my_trl_rewards:think_closed": [(1.0, "ok"), (0.0, "ok"), (0.0, "ok")],
    "my_trl_rewards:answer_mentioned": [(1.0, "ok"), (0.0, "not_applicable"), (0.0, "ok")],
    "my_verl_rewards:compute_score": [(1.0, "ok"), (0.0, "ok"), (0.0, "ok")],  # "<think>hmm" holds no "1"
    "my_async_rewards:judged_length": [(1.0, "ok"), (1.0, "ok"), (0.0, "ok")],
    "my_async_rewards:judged_batch": [(0.37, "ok"), (0.10, "ok"), (1.0, "ok")],
    "has_think": [(1.0, "ok"), (1.0, "ok"), (0.0, "ok")],
}
WEIGHTS = {item["name"]: item["weight"] for item in ITEMS}
TOTALS = [sum(WEIGHTS[label] * values[i][0] for label, values in EXPECTED.items()) for i in range(3)]


def _user_folder(tmp_path: Path, rows=ROWS, items=ITEMS, plugins=("my_plugin_rewards",)) -> Path:
    folder = write_user_reward_modules(tmp_path / "user")
    assert not folder.resolve().is_relative_to(ROOT)  # the user's folder is outside the repo
    (folder / "rewards.yaml").write_text(yaml.safe_dump({"rewards": {"plugins": list(plugins), "items": items}}))
    (folder / "gens.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def r1_score(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the working directory alone finds the modules
    return subprocess.run([R1, "score", *args], cwd=folder, capture_output=True, text=True, env=env, timeout=300)


def test_users_trl_verl_async_and_plugin_rewards_score_each_row(tmp_path):
    folder = _user_folder(tmp_path)
    out = r1_score(folder, "-c", "rewards.yaml", "--completions", "gens.jsonl")
    assert out.returncode == 0, out.stderr
    scored = [json.loads(line) for line in (folder / "gens.scored.jsonl").read_text().splitlines()]
    assert (folder / "gens.jsonl").read_text().count("\n") == 3 and "reward" not in (folder / "gens.jsonl").read_text()
    assert len(scored) == 3
    for i, (row, got) in enumerate(zip(ROWS, scored)):
        assert {k: got[k] for k in row} == row  # every input field kept, as it was
        assert got["reward"] == pytest.approx(TOTALS[i])
        assert set(got["rewards"]) == set(EXPECTED)
        for label, values in EXPECTED.items():
            value, reason = values[i]
            assert got["rewards"][label]["value"] == pytest.approx(value), (i, label)
            assert got["rewards"][label]["reason"] == reason, (i, label)
    # The table: a block per task, each reward's mean over the rows it applies to, and its reasons counted.
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["task", "reward"])
    blocks = [line.split()[0] for line in lines[header + 1:] if line and not line[0].isspace()]
    assert blocks == ["arithmetic", "word_problem", "(all)", "scored"]
    mentioned = next(line for line in lines if "my_trl_rewards:answer_mentioned" in line and "not_applicable" in line)
    assert mentioned.split()[1:3] == ["0", "-"]  # word_problem: applies to no row, so no mean
    assert "scored 3 rows: gens.scored.jsonl" in out.stdout


def test_out_path_and_the_recipe_rewards(tmp_path):
    """Default config (format + correctness); --out elsewhere; prefilled_think from an override."""
    rows = [{"task": "arithmetic", "answer": "1/2", "completion": "<think>half</think><answer>0.5</answer>"},
            {"task": "arithmetic", "answer": "3", "completion": "so</think><answer>3</answer>"}]
    folder = _user_folder(tmp_path, rows=rows)
    out = r1_score(folder, "--completions", "gens.jsonl", "--out", "scored/out.jsonl", "rewards.prefilled_think=true")
    assert out.returncode == 0, out.stderr
    scored = [json.loads(line) for line in (folder / "scored" / "out.jsonl").read_text().splitlines()]
    # prefilled: the first opens <think> itself (repeated_tag), the second is the prefilled layout.
    assert [r["rewards"]["format"]["reason"] for r in scored] == ["repeated_tag", "ok"]
    assert [r["rewards"]["correctness"]["value"] for r in scored] == [1.0, 1.0]
    assert [r["reward"] for r in scored] == [1.0, 1.5]
    assert not (folder / "gens.scored.jsonl").exists()


@pytest.mark.parametrize("line, message", [
    ("{not json", "not a JSON object (Expecting property name enclosed in double quotes at column 2)"),
    ('["completion", "x"]', "expected a JSON object with a 'completion', got a JSON list"),
    ('{"prompt": "1+1?", "answer": "2"}', "no 'completion' field (the row's fields: answer, prompt)"),
    ('{"completion": 5}', "'completion' must be a string, got int"),
])
def test_a_bad_row_is_refused_in_one_line_with_file_and_line(tmp_path, line, message):
    folder = _user_folder(tmp_path)
    with open(folder / "gens.jsonl", "a") as f:
        f.write("\n" + line + "\n")  # line 4 is blank (skipped), the bad row is line 5
    out = r1_score(folder, "-c", "rewards.yaml", "--completions", "gens.jsonl")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"r1: error: gens.jsonl:5: {message}"]
    assert not (folder / "gens.scored.jsonl").exists()


def test_a_reward_failing_on_every_call_stops_it_in_one_line(tmp_path):
    rows = [{"id": f"r-{i}", "task": "arithmetic", "answer": str(i), "completion": f"<answer>{i}</answer>"}
            for i in range(40)]
    items = [{"name": "format", "weight": 0.5}, {"name": "my_broken_rewards:always_raises", "weight": 1.0}]
    folder = _user_folder(tmp_path, rows=rows, items=items, plugins=())
    out = r1_score(folder, "-c", "rewards.yaml", "--completions", "gens.jsonl")
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("r1: error")]
    assert errors == [out.stderr.strip().splitlines()[-1]]  # one error line, the last thing said
    # Within its first 16 calls (the first chunk holds rewards.fail_after rows). Rows are scored on threads, so
    # which row's failure was counted first is not fixed; the count and the error are.
    assert re.fullmatch(r"r1: error: reward 'my_broken_rewards:always_raises' failed on every one of its first 16 "
                        r"calls: KeyError: 'solution' \(first sample id 'r-\d+'\); rewards.fail_after=16", errors[0])
    assert not (folder / "gens.scored.jsonl").exists()


# ---- the same code in-process (fast) -------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (b'{"completion": "a"}\n\xff\xfe\n', "x.jsonl:2: not UTF-8 text (invalid start byte at byte 0)"),
    (b'{"completion": "a"}\n42\n', "x.jsonl:2: expected a JSON object with a 'completion', got a JSON int"),
    (b"\n\n", "x.jsonl: no rows to score"),
])
def test_read_rows_names_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "x.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError) as exc:
        read_rows(path)
    assert str(exc.value) == f"{tmp_path}/{message}"


def test_score_file_never_overwrites_its_input_and_tables_each_task(tmp_path):
    src = tmp_path / "gens.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert default_out_path(src) == tmp_path / "gens.scored.jsonl"
    assert default_out_path(tmp_path / "gens.json") == tmp_path / "gens.scored.jsonl"
    cfg = load_config(None, [])
    with pytest.raises(ValueError, match="is the input file"):
        score_file(cfg, src, src)
    result = score_file(cfg, src, progress=False)
    assert result.out == tmp_path / "gens.scored.jsonl" and result.rows == 3
    assert result.labels == ["format", "correctness"]
    first, *_ = (json.loads(line) for line in result.out.read_text().splitlines())
    assert first["rewards"] == {"format": {"value": 1.0, "reason": "ok"}, "correctness": {"value": 1.0, "reason": "ok"}}
    assert first["reward"] == 1.5
    table = result.table.splitlines()
    assert table[1].split() == ["arithmetic", "(total)", "2", "0.750"]
    assert table[2].split()[:3] == ["format", "2", "0.500"] and "missing_think 1" in table[2] and "ok 1" in table[2]


def test_chunks_start_with_fail_after_rows():
    assert chunk_bounds(40, 512, 16) == [(0, 16), (16, 40)]
    assert chunk_bounds(1100, 512, 16) == [(0, 16), (16, 528), (528, 1040), (1040, 1100)]
    assert chunk_bounds(10, 512, 16) == [(0, 10)] and chunk_bounds(3, 2) == [(0, 2), (2, 3)]


def test_summary_table_counts_reasons_and_skips_not_applicable_in_means():
    from rewards import Reward

    rows = [{"task": "t"}, {"task": "t"}, {}]
    results = [(1.0, {"r": Reward(1.0, "ok")}), (0.0, {"r": Reward(0.0, "not_applicable")}),
               (0.0, {"r": Reward(0.0, "wrong")})]
    lines = summary_table(rows, results, ["r"]).splitlines()
    assert [line.split()[0] for line in lines if line[0] != " "] == ["task", "(no", "t", "(all)"]
    t_row = lines[lines.index(next(line for line in lines if line.startswith("t "))) + 1].split()
    assert t_row == ["r", "1", "1.000", "not_applicable", "1,", "ok", "1"]


def test_the_math_verify_pool_checks_each_distinct_pair_once():
    """What makes `r1 score` fast on n samples per prompt: a verdict ("ok"/"wrong") is remembered per process;
    a timeout is not (the next try may have the time it needs)."""
    from rewards.math_check_pool import HelperPool

    pool = HelperPool(size=1)
    try:
        assert pool.check("1/2", "0.5", 5.0) == (True, "ok")
        assert pool.check("1/2", "0.4", 5.0) == (False, "wrong")
        (helper,) = pool._idle
        helper.kill()  # a helper that is gone cannot answer: only the remembered verdicts can
        pool._idle.clear()
        pool._start_failed_at = float("inf")  # and no new helper may start (it "failed" moments ago)
        assert pool.check("1/2", "0.5", 5.0) == (True, "ok")
        assert pool.check("1/2", "0.4", 5.0) == (False, "wrong")
        assert pool.check("1/2", "2/4", 5.0) == (False, "verifier_unavailable")  # a new pair needs a helper
    finally:
        pool.close()
    fresh = HelperPool(size=1)
    try:
        assert fresh.check("42", "9^{9^{9^{9}}}", 0.3) == (False, "timeout")
        assert ("42", "9^{9^{9^{9}}}") not in fresh._verdicts
    finally:
        fresh.close()
