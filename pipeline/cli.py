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

    prep = sub.add_parser("prepare-model", help="import a model (default: the config's model.name) into the cache; "
                                                "smollm2-moe: upcycle SmolLM2 into a 4-expert MoE and tune it")
    prep.add_argument("model", nargs="?", help="alias to prepare: smollm2, smollm2-moe (default: model.name)")
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

    r3 = sub.add_parser("r3-check", help="MoE models: rollout vs training routing mismatch and k3 KL, without and "
                                         "with Rollout Routing Replay, and what R3 costs (writes r3_check.json)")
    _add_config_args(r3)
    r3.add_argument("--model", help="model dir or alias (default: config model.name)")
    r3.add_argument("--out", help="output dir (default: runs/<name>/r3_check)")

    sm = sub.add_parser("submit", help="run a recipe command (run, a stage, eval, ...) as a Ray job on a cluster: "
                                       "prints the job id and the run dir, then follows the logs")
    sm.add_argument("-c", "--config", help="recipe YAML inside the project (it travels in the job's working dir)")
    sm.add_argument("--address", help="the head's dashboard, http://HEAD:8265 (default: $RAY_ADDRESS, else local)")
    sm.add_argument("--no-follow", action="store_true", help="return after submitting; `r1 jobs logs ID` follows")
    sm.add_argument("job", nargs=argparse.REMAINDER, metavar="COMMAND [ARGS] [key.sub=value ...]",
                    help="what the job runs: run, a stage command, eval, ... with its arguments and overrides")

    jb = sub.add_parser("jobs", help="Ray jobs on a cluster: list, status ID, logs ID [--follow], stop ID")
    jb.add_argument("action", choices=("list", "status", "logs", "stop"))
    jb.add_argument("job_id", nargs="?")
    jb.add_argument("--address", help="the head's dashboard, http://HEAD:8265 (default: $RAY_ADDRESS, else local)")
    jb.add_argument("--follow", action="store_true", help="logs: stream until the job ends")

    rep = sub.add_parser("report", help="Markdown + PNG report of a recipe run (table, curves, eval by stage)")
    rep.add_argument("run_dir", help="runs/<name>")
    rep.add_argument("--out", help="output dir (default: <run_dir>/report)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `r1` console script."""
    logging.basicConfig(level=os.environ.get("R1_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    from .recipe import forget_failed_stage

    forget_failed_stage()
    try:
        if args.command == "report":
            return _report(args)
        if args.command == "jobs":
            from .submit import jobs

            return jobs(args.action, args.job_id, address=args.address, follow=args.follow)
        if args.command == "submit":
            return _submit(args)
        if args.command == "prepare-model" and args.model and "=" in args.model:  # an override, not an alias
            args.overrides.insert(0, args.model)
            args.model = None
        cfg = load_config(args.config, args.overrides)
        if args.command not in ("prepare-model", "config", "make-data"):  # the commands that load the model
            _prepare_if_needed(cfg)
        if args.command in COMMANDS:
            return COMMANDS[args.command](cfg, args)
        return _stage(cfg, args)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        log.debug("the error's traceback (R1_LOG_LEVEL=DEBUG)", exc_info=True)
        print(f"r1: error{_where()}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything else keeps its traceback, after the one line a job report shows
        print(f"r1: error{_where()}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
              file=sys.stderr)
        raise
    finally:
        from .placement import release_placement

        release_placement()


def _where() -> str:
    """`` in stage NAME`` while a stage runs (what a failed job's report names), else nothing."""
    from .recipe import running_stage

    return f" in stage {running_stage()}" if running_stage() else ""


def _submit(args) -> int:
    """`r1 submit`: the job's command and overrides are checked here, against the same config, first."""
    from .recipe import STAGES
    from .submit import SubmitError, is_override, submit

    commands = ("run", "eval", "make-data", "prepare-model", "r3-check", *(s.command for s in STAGES if s.help))
    if not args.job or args.job[0] not in commands:
        raise SubmitError(f"r1 submit: give the command the job runs, one of {', '.join(commands)}")
    cfg = load_config(args.config, [a for a in args.job[1:] if is_override(a)])
    return submit(cfg, args.job, args.config, address=args.address, follow=not args.no_follow)


def _config(cfg, args) -> int:
    print("# a null field of an optim / sampling block takes the run-wide value (trainer.optim.*, rollout.*)")
    print(dump_yaml(cfg), end="")
    return 0


def _prepare_model(cfg, args) -> int:
    from trainer.model_io import resolve_model

    spec = args.model or cfg.model.name
    if spec == "smollm2-moe":
        from .moe_model import prepare_moe_model

        print(prepare_moe_model(cfg))
    else:
        print(resolve_model(spec))
    return 0


def _prepare_if_needed(cfg) -> None:
    """A config whose model is made by a command (smollm2-moe) gets it made before anything needs it."""
    from trainer.model_io import PREPARED_MODELS, is_complete, prepared_model_dir

    if cfg.model.name in PREPARED_MODELS and not is_complete(prepared_model_dir(cfg.model.name)):
        from .moe_model import prepare_moe_model

        log.info("model %s is not prepared yet: preparing it first", cfg.model.name)
        prepare_moe_model(cfg)


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
    from .recipe import STAGES, stage_running

    stage = next(s for s in STAGES if s.command == args.command)
    log.info("run dir: %s", cfg.run_dir())  # first: a submitted job's log says where its artifacts go
    with stage_running(stage.name):
        summary = stage.run(cfg, out=args.out)
    _print_summary(summary)
    return 0


def _run(cfg, args) -> int:
    from .recipe import run_recipe

    log.info("run dir: %s", cfg.run_dir())

    run_recipe(cfg, start=args.start, until=args.until or cfg.recipe.until)
    if not args.no_report:
        from .report import write_report

        print(f"report: {write_report(cfg.run_dir())}")
    return 0


def _r3_check(cfg, args) -> int:
    from .r3_check import run_r3_check

    result = run_r3_check(cfg, model=args.model, out=args.out)
    for name in ("without_r3", "with_r3"):
        r = result[name]
        print(f"{name:>10}: router mismatch {r['router_mismatch']:.4f}, token mismatch {r['token_mismatch']:.4f}, "
              f"k3 {r['k3']:.2e}, |dlogp| > ln2 {r['frac_over_ln2']:.4f}")
    k3 = result["k3_paired"]
    print(f"k3 with - without R3, paired over {k3['rows']} rows: {k3['mean_row_diff_with_minus_without']:+.2e} "
          f"(standard error {k3['standard_error'] or float('nan'):.1e}); replaying other experts moves logprobs by "
          f"{result['routing_sensitivity']['mean_abs_dlogp_other_experts']:.3f} on average")
    print(f"routing bytes per token {result['routing_bytes_per_token']}, "
          f"R3 overhead {100 * result['overhead_fraction']:.1f}% of generation + update time")
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
            "run": _run, "r3-check": _r3_check}  # and one per stage of the recipe's table (_stage)


if __name__ == "__main__":
    sys.exit(main())
