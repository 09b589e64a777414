"""The `r1` command line: one subcommand per recipe step, all taking `-c FILE` and `key.sub=value` overrides."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .config import ConfigError, dump_yaml, load_config

log = logging.getLogger("r1")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="recipe YAML (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r1", description="The DeepSeek-R1 post-training recipe: data, model import, evaluation, stages.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cfg = sub.add_parser("config", help="inspect a recipe config")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = cfg_sub.add_parser("show", help="print the resolved config (file + overrides + defaults)")
    _add_config_args(show)

    prep = sub.add_parser("prepare-model", help="import a model (default: the embedded SmolLM2 GGUF) into the cache")
    _add_config_args(prep)

    data = sub.add_parser("make-data", help="write the train/test splits and cold-start demos as JSONL")
    _add_config_args(data)
    data.add_argument("--out", help="output dir (default: runs/<name>/data)")

    ev = sub.add_parser("eval", help="pass@1, pass@k, maj@k and format rate per task")
    _add_config_args(ev)
    ev.add_argument("--model", help="model dir or spec (default: config model.name)")
    ev.add_argument("--data", help="JSONL/Parquet to evaluate (default: the config's held-out split)")
    ev.add_argument("--out", help="output dir (default: runs/<name>/eval/<label>)")
    ev.add_argument("--label", default=None, help="name of this evaluation (default: the model dir's name)")

    stages = {"cold-start": ("stage 1: SFT on R1-format demonstrations, then a held-out eval", "cold_start"),
              "reasoning-rl": ("stage 2: GRPO with rule rewards on Ray actors (resumes if interrupted)",
                               "reasoning_rl")}
    for command, (help_text, folder) in stages.items():
        stage = sub.add_parser(command, help=help_text)
        _add_config_args(stage)
        stage.add_argument("--out", help=f"output dir (default: runs/<name>/{folder})")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `r1` console script."""
    logging.basicConfig(level=os.environ.get("R1_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        return COMMANDS[args.command](cfg, args)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"r1: error: {exc}", file=sys.stderr)
        return 2


def _config(cfg, args) -> int:
    print(dump_yaml(cfg), end="")
    return 0


def _prepare_model(cfg, args) -> int:
    from trainer.model_io import resolve_model

    print(resolve_model(cfg.model.name))
    return 0


def _make_data(cfg, args) -> int:
    from .data import write_datasets

    out = Path(args.out) if args.out else cfg.run_dir() / "data"
    for name, path in write_datasets(cfg, out).items():
        print(f"{name}: {path}")
    return 0


def _eval(cfg, args) -> int:
    from .evaluation import run_eval

    _, table = run_eval(cfg, model=args.model, data=args.data, out=args.out, label=args.label)
    print(table)
    return 0


def _cold_start(cfg, args) -> int:
    from .sft import run_cold_start

    summary = run_cold_start(cfg, out=args.out)
    print(f"model: {summary['model']}")
    return 0


def _reasoning_rl(cfg, args) -> int:
    from .rl import run_reasoning_rl

    summary = run_reasoning_rl(cfg, out=args.out)
    print(f"model: {summary['model']}")
    if summary.get("final_eval"):
        e = summary["final_eval"]
        print(f"held-out pass@1 {e['eval/pass@1']:.3f} [{e['eval/pass@1_ci_low']:.3f}, "
              f"{e['eval/pass@1_ci_high']:.3f}], format rate {e['eval/format_rate']:.3f}")
    return 0


COMMANDS = {"config": _config, "prepare-model": _prepare_model, "make-data": _make_data, "eval": _eval,
            "cold-start": _cold_start, "reasoning-rl": _reasoning_rl}


if __name__ == "__main__":
    sys.exit(main())
