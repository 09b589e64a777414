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

    from .recipe import STAGE_NAMES, STAGES

    for stage in STAGES:  # the recipe's own table: one subcommand per stage that has a help line
        if stage.help:
            p = sub.add_parser(stage.command, help=stage.help)
            _add_config_args(p)
            p.add_argument("--out", help=f"output dir (default: runs/<name>/{stage.name})")

    run = sub.add_parser("run", help="the whole recipe in order, with an eval after every stage; skips stages "
                                     "already complete for the same config and inputs, resumes interrupted ones")
    _add_config_args(run)
    run.add_argument("--from", dest="start", choices=STAGE_NAMES, help="first stage to run")
    run.add_argument("--until", choices=STAGE_NAMES, help="last stage to run")
    run.add_argument("--no-report", action="store_true", help="do not write runs/<name>/report at the end")

    rep = sub.add_parser("report", help="Markdown + PNG report of a recipe run (table, curves, eval by stage)")
    rep.add_argument("run_dir", help="runs/<name>")
    rep.add_argument("--out", help="output dir (default: <run_dir>/report)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `r1` console script."""
    logging.basicConfig(level=os.environ.get("R1_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "report":
            return _report(args)
        cfg = load_config(args.config, args.overrides)
        if args.command in COMMANDS:
            return COMMANDS[args.command](cfg, args)
        return _stage(cfg, args)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"r1: error: {exc}", file=sys.stderr)
        return 2


def _config(cfg, args) -> int:
    print("# a null field of an optim / sampling block takes the run-wide value (trainer.optim.*, rollout.*)")
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


def _stage(cfg, args) -> int:
    """`r1 <stage>`: run one stage of the recipe's table; print where its result went."""
    from .recipe import STAGES

    stage = next(s for s in STAGES if s.command == args.command)
    _print_summary(stage.run(cfg, out=args.out))
    return 0


def _run(cfg, args) -> int:
    from .recipe import run_recipe

    run_recipe(cfg, start=args.start, until=args.until)
    if not args.no_report:
        from .report import write_report

        print(f"report: {write_report(cfg.run_dir())}")
    return 0


def _report(args) -> int:
    from .report import write_report

    print(f"report: {write_report(args.run_dir, args.out)}")
    return 0


def _print_summary(summary: dict) -> None:
    if "reward_model" in summary:
        print(f"model: {summary['reward_model']} (held-out pair accuracy {summary['eval_accuracy']:.3f})")
    elif summary.get("model"):
        print(f"model: {summary['model']}")
    else:
        print(f"data: {summary['data']} ({summary['rows']} rows, acceptance {summary['acceptance_rate']:.3f})")
    if summary.get("final_eval"):
        e = summary["final_eval"]
        print(f"held-out pass@1 {e['eval/pass@1']:.3f} [{e['eval/pass@1_ci_low']:.3f}, "
              f"{e['eval/pass@1_ci_high']:.3f}], format rate {e['eval/format_rate']:.3f}")


COMMANDS = {"config": _config, "prepare-model": _prepare_model, "make-data": _make_data, "eval": _eval,
            "run": _run}  # and one per stage of the recipe's table (_stage)


if __name__ == "__main__":
    sys.exit(main())
