"""What a recipe reads and how it is judged: its data (synthetic tasks, users' sources), its rewards and its
held-out eval. Part of the recipe config (:mod:`pipeline.config`)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .config_base import EVALUATED_STAGES, R1_SYSTEM_PROMPT, SamplingBlock, _Strict


BUILTIN_TASKS = ("arithmetic", "word_problem", "countdown", "linear_equation", "instruction", "code")


class TaskMix(_Strict):
    name: str = Field(description="a built-in task, or a reasoning-gym generator with source: reasoning_gym")
    n_train: int = Field(1000, ge=0)
    n_test: int = Field(100, ge=0)
    difficulty: int = Field(1, ge=1, le=5, description="built-in tasks; reasoning-gym's knobs go in config")
    source: Literal["builtin", "reasoning_gym"] = "builtin"
    config: dict[str, Any] = Field(default_factory=dict, description="reasoning_gym: the generator's config keys")
    scorer: Literal["reasoning_gym", "math_verify"] | None = Field(
        None, description="reasoning_gym: its own score_answer (default) or math_verify (numeric answers)")

    @model_validator(mode="after")
    def _known_task(self) -> "TaskMix":
        if self.source == "builtin":
            if self.name not in BUILTIN_TASKS:
                raise ValueError(f"name={self.name!r}: expected one of {', '.join(map(repr, BUILTIN_TASKS))} "
                                 "(or source: reasoning_gym for a reasoning-gym generator)")
            if self.config or self.scorer:
                raise ValueError(f"{self.name}: config and scorer are for source: reasoning_gym tasks")
        else:  # the generator and its config, checked by the library now rather than at make-data time
            from tasks.reasoning_gym_source import check_task

            check_task(self.name, self.config, self.scorer)
        return self


class SourceSpec(_Strict):
    """A user's dataset, read the same way wherever a stage reads data (``data.sources``, ``cold_start.data``,
    `r1 eval --data`): a local JSONL / JSON / Parquet file, a dataset folder or a hub dataset id."""

    path: str
    subset: str | None = Field(None, description="hub dataset config name (e.g. 'main' for openai/gsm8k)")
    split: str = "train"
    prompt_field: str = "prompt"
    answer_field: str | None = Field("answer", description="null: rows without gold answers")
    answer_pattern: str | None = Field(None, description="extracts the gold answer from answer_field: a regex "
                                       "whose group 1 is the answer, or boxed (the last \\boxed{}) or gsm8k (#### N)")
    messages_field: str | None = Field(None, description="chat column of cold-start demonstrations (read for the "
                                       "cold start, never copied into reward rows)")
    columns: list[str] | Literal["all"] | None = Field(
        None, description="other columns the samples keep besides the schema fields: a list, 'all', or null for "
        "every scalar column (list / mapping columns such as generations are left out, their names logged)")
    task: str | None = None
    limit: int | None = Field(None, ge=1)

    @field_validator("answer_pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            from tasks.answer_patterns import check_answer_pattern

            check_answer_pattern(pattern)  # ValueError: one line, said by the config error
        return pattern

    @field_validator("columns", mode="before")
    @classmethod
    def _columns_form(cls, columns: Any) -> Any:
        # Said here in one line: the union's own error names each member it tried.
        if columns is not None and columns != "all" and not (
                isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
            raise ValueError("expected a list of column names, 'all' or null")
        return columns


class DataSource(SourceSpec):
    """A ``data.sources`` entry: a :class:`SourceSpec` whose rows are RL prompts (``role: train``) or held out
    for evals (``role: test``)."""

    role: Literal["train", "test"] = "train"


class DataConfig(_Strict):
    system_prompt: str = R1_SYSTEM_PROMPT
    template: Literal["chat", "r1_zero", "r1_zero_chat"] = Field(
        "chat", description="how prompts are laid out (tasks.prompting): chat = the chat template with "
        "system_prompt; r1_zero = the R1 paper's R1-Zero template as raw text (no chat template, no system "
        "prompt); r1_zero_chat = that text as the user turn of the chat template")
    tasks: list[TaskMix] = Field(default_factory=lambda: [TaskMix(name="arithmetic")])
    sources: list[DataSource] = Field(default_factory=list)


class RewardItem(_Strict):
    name: str = Field(description="registry name (format, accuracy, correctness, ...) or module:function")
    weight: float = 1.0
    options: dict[str, Any] = Field(default_factory=dict)
    tasks: list[str] | None = Field(None, description="score only samples of these tasks (others: 0, "
                                    "reason not_applicable); default: every task")

    @model_validator(mode="after")
    def _resolvable(self) -> "RewardItem":
        # Unknown names, unimportable module:function paths and options a function does not take fail
        # here, at load time, not hours into a run.
        from rewards import weighted_sum

        weighted_sum([self.model_dump()])
        return self


class RewardsConfig(_Strict):
    prefilled_think: bool | Literal["auto"] = Field(
        "auto", description="completions start inside <think> (auto: the chat template ends with <think>)")
    items: list[RewardItem] = Field(
        default_factory=lambda: [RewardItem(name="format", weight=0.5), RewardItem(name="correctness", weight=1.0)]
    )
    plugins: list[str] = Field(default_factory=list, description="modules imported before the items are read (in "
                               "the driver and every reward worker): their @register names can be used as items")
    fail_after: int = Field(16, ge=1, description="a reward that raises or answers a non-number on every one of its "
                            "first N calls stops the run in one line (occasional errors score 0, reason counted)")

    @model_validator(mode="before")
    @classmethod
    def _import_plugins(cls, data: Any) -> Any:
        # Before the items are validated: a plugin's @register names are what they may use.
        if isinstance(data, dict) and isinstance(data.get("plugins"), list):
            from rewards.registry import import_plugins

            import_plugins(data["plugins"])
        return data


class EvalRewardRole(_Strict):
    """One role of the eval's scoring: which reward, with which options."""

    name: str | None = Field(None, description="registry name or module:function (null: the role's own reward, "
                             "correctness / format)")
    options: dict[str, Any] = Field(default_factory=dict, description="merged over the options of the "
                                    "rewards.items entry of that name, e.g. {answer_format: boxed} or "
                                    "{style: think_boxed}")


class EvalRewards(_Strict):
    """What `r1 eval` counts: "correct" = the correctness reward is 1.0, "formatted" = the format reward is 1.0.
    Each role defaults to the recipe's own item of that name in rewards.items (with its options), else the
    built-in reward."""

    correctness: EvalRewardRole = Field(default_factory=EvalRewardRole, description="decides pass@k / maj@k; "
                                        "correctness options: answer_format tags | boxed | last_number | auto")
    format: EvalRewardRole = Field(default_factory=EvalRewardRole, description="decides the format rate; format "
                                   "options: style r1 | think_boxed")

    @model_validator(mode="after")
    def _resolvable(self) -> "EvalRewards":
        # Unknown names, options a reward does not take and values outside a Literal fail at load.
        from rewards import weighted_sum
        from rewards.options import check_option_values
        from rewards.registry import resolve

        for role in ("correctness", "format"):
            spec = getattr(self, role)
            if spec.name is not None or spec.options:
                name = spec.name or role
                weighted_sum([{"name": name, "options": spec.options, "label": role}])
                check_option_values(role, resolve(name), spec.options)
        return self


class EvalConfig(_Strict):
    split: Literal["train", "test"] = "test"
    n_samples: int = Field(4, ge=1, description="samples per prompt (pass@k and maj@k need k <= n_samples)")
    k: list[int] = Field(default_factory=lambda: [1, 4])
    sampling: SamplingBlock = Field(default_factory=lambda: SamplingBlock(temperature=0.6, top_p=0.95))
    limit_per_task: int | None = Field(None, ge=1)
    general_stages: list[str] | None = Field(
        None, description="stages of `r1 run` whose held-out eval also covers general_rl.general_tasks (null: "
        "every stage); the others are evaluated on the reasoning tasks only")
    rewards: EvalRewards = Field(default_factory=EvalRewards, description="the correctness and format rewards the "
                                 "eval scores with (default: the recipe's, from rewards.items)")

    @field_validator("general_stages")
    @classmethod
    def _known_stages(cls, stages: list[str] | None) -> list[str] | None:
        unknown = [s for s in stages or () if s not in EVALUATED_STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(map(repr, unknown))}; stages with a model to "
                             f"evaluate: {', '.join(EVALUATED_STAGES)}")
        return stages

    @field_validator("k")
    @classmethod
    def _positive(cls, ks: list[int]) -> list[int]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("every k must be >= 1")
        return sorted(set(ks))

