"""Config loading, overrides and one-line errors; every shipped recipe validates."""
from pathlib import Path

import pytest

from pipeline.config import ConfigError, RecipeConfig, dump_yaml, load_config, parse_override

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").rglob("*.yaml"))


def test_shipped_recipes_exist_and_validate():
    names = {p.name for p in RECIPES}
    assert "quickstart.yaml" in names
    assert any("qwen2.5-math-7b" in n for n in names)
    for path in RECIPES:
        cfg = load_config(path)
        assert isinstance(cfg, RecipeConfig), path


def test_quickstart_is_cpu_default():
    cfg = load_config(ROOT / "configs" / "quickstart.yaml")
    assert cfg.model.name == "smollm2"
    assert {t.name for t in cfg.data.tasks} >= {"arithmetic", "word_problem"}  # reasoning, rule-verified
    assert [t.name for t in cfg.general_rl.general_tasks] == ["instruction"]  # general prompts of stage 5
    assert cfg.rollout.engine == "vllm" and cfg.distill.student_layers < 30


def test_dotted_overrides_apply_with_yaml_types():
    cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                      ["eval.k=[1,2,8]", "data.tasks.1.n_test=7", "rollout.dtype=bfloat16", "run.name=x"])
    assert cfg.eval.k == [1, 2, 8]
    assert cfg.data.tasks[1].n_test == 7
    assert cfg.rollout.dtype == "bfloat16"
    assert cfg.run.name == "x"


@pytest.mark.parametrize("override, must_contain", [
    ("rollout.max_new_tokens=abc", ["rollout.max_new_tokens", "'abc'", "integer"]),
    ("rollout.engine=tpu", ["rollout.engine", "'tpu'", "'vllm'", "'hf'"]),
    ("rollout.temprature=0.5", ["unknown key", "rollout.temprature", "max_new_tokens"]),
    ("eval.k=[0]", ["eval.k", ">= 1"]),
    ("data.tasks.9.n_test=1", ["data.tasks.9", "index"]),
    ("rollout.gpu_memory_utilization=2", ["rollout.gpu_memory_utilization", "2"]),
    ("data.sources=[{path: x.jsonl, answer_pattern: '(('}]", ["answer_pattern", "regex"]),
    ("novalue", ["key.sub=value"]),
])
def test_bad_override_is_one_line_naming_field_and_value(override, must_contain):
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "configs" / "quickstart.yaml", [override])
    message = str(info.value)
    assert "\n" not in message
    for part in must_contain:
        assert part in message, (part, message)


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_dump_round_trips_and_hash_tracks_changes(tmp_path):
    cfg = load_config(ROOT / "configs" / "quickstart.yaml")
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(path)
    assert again == cfg and again.hash() == cfg.hash()
    assert load_config(path, ["run.seed=1"]).hash() != cfg.hash()


def test_parse_override_splits_path():
    assert parse_override("a.b.0=[1, 2]") == (["a", "b", "0"], [1, 2])
    assert parse_override("run.name=") == (["run", "name"], "")
