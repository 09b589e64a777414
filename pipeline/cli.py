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


def _add_source_args(p: argparse.ArgumentParser) -> None:
    """`r1 eval --data`'s source options, the fields of a ``data.sources`` entry (pipeline.data.eval_source)."""
    g = p.add_argument_group("--data columns (as a data source's options)")
    g.add_argument("--prompt-field", help="column of the prompt (default: prompt)")
    g.add_argument("--answer-field", help="column of the gold answer (default: answer; 'null': none)")
    g.add_argument("--answer-pattern", help="extract the gold answer from it: a regex whose group 1 is the answer, "
                                            "or boxed (the last \\boxed{}: MATH) or gsm8k (#### N)")
    g.add_argument("--messages-field", help="chat column, left out of the scored rows")
    g.add_argument("--subset", help="hub dataset config name (e.g. main for openai/gsm8k)")
    g.add_argument("--split", help="hub dataset split (default: train)")
    g.add_argument("--columns", help="other columns the rows keep: all, or names separated by commas "
                                     "(default: the scalar ones)")
    g.add_argument("--task", help="task name of the rows (default: the file's stem or the dataset's name)")
    g.add_argument("--limit", type=int, help="evaluate only the first N rows")


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
    ev.add_argument("--data", help="JSONL/JSON/Parquet file, dataset folder or hub id to evaluate (default: the "
                                    "config's held-out split); the flags below map its columns, as a data source's "
                                    "options do")
    _add_source_args(ev)
    ev.add_argument("--out", help="output dir (default: runs/<name>/eval/<label>)")
    ev.add_argument("--label", default=None, help="name of this evaluation (default: the stage for runs/<name>/"
                                                  "<stage>/model, <stage>-step_N for its checkpoints, else the model "
                                                  "dir's name + a hash of its path); another model's eval under a "
                                                  "given --label or --out is refused, never overwritten")

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

    sc = sub.add_parser("score", help="score a JSONL of completions (each row: completion + the sample's fields) "
                                      "with the config's rewards, in this process: writes FILE.scored.jsonl, "
                                      "prints the mean and reasons of each reward per task")
    _add_config_args(sc)
    sc.add_argument("--completions", required=True, metavar="FILE.jsonl", help="rows with 'completion' and the "
                                                                               "sample's fields (prompt, answer, task, ...)")
    sc.add_argument("--out", help="scored rows (default: FILE.scored.jsonl next to the input)")
    sc.add_argument("--threads", type=int, default=None, help="scoring threads (default: 2 per core, at least 4)")

    r3 = sub.add_parser("r3-check", help="MoE models: rollout vs training routing mismatch and k3 KL, without and "
                                         "with Rollout Routing Replay, and what R3 costs (writes r3_check.json)")
    _add_config_args(r3)
    r3.add_argument("--model", help="model dir or alias (default: config model.name)")
    r3.add_argument("--out", help="output dir (default: runs/<name>/r3_check)")
    r3.add_argument("--repeats", type=int, default=5, help="timed pairs per arm, order alternating (default 5, "
                                                           "at least 2)")

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

    ex = sub.add_parser("export", help="an HF model dir (what vLLM and transformers load) from a trainer checkpoint "
                                       "(runs/<name>/<stage>/checkpoints/step_N): checkpoints hold sharded DCP state")
    ex.add_argument("checkpoint", help="the checkpoint folder, e.g. runs/q/reasoning_rl/checkpoints/step_00004")
    ex.add_argument("out", help="the HF model dir to write")
    ex.add_argument("--model", help="the model the stage started from, if it moved (default: the one the "
                                    "checkpoint names)")

    cl = sub.add_parser("clean", help="remove a run's superseded stage folders (runs/<name>/superseded/, what a "
                                      "config change moved aside); never a live stage folder")
    cl.add_argument("run_dir", nargs="?", help="runs/<name> (default: the config's run dir)")
    _add_config_args(cl)
    cl.add_argument("--superseded", action="store_true", help="what is removed: the superseded folders (the default, "
                                                              "and the only kind for now)")
    cl.add_argument("--dry-run", action="store_true", help="list what would be removed and its size; remove nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `r1` console script."""
    logging.basicConfig(level=os.environ.get("R1_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    put_cwd_on_path()
    args = build_parser().parse_args(argv)
    from .recipe import forget_failed_stage

    forget_failed_stage()
    try:
        if args.command == "report":
            return _report(args)
        if args.command == "clean":
            return _clean(args)
        if args.command == "export":
            return _export(args)
        if args.command == "jobs":
            from .submit import jobs

            return jobs(args.action, args.job_id, address=args.address, follow=args.follow)
        if args.command == "submit":
            return _submit(args)
        if args.command == "prepare-model" and args.model and "=" in args.model:  # an override, not an alias
            args.overrides.insert(0, args.model)
            args.model = None
        cfg = load_config(args.config, args.overrides)
        if args.command not in ("prepare-model", "config", "make-data", "score"):  # the commands that load the model
            _prepare_if_needed(cfg)
        if args.command in COMMANDS:
            return COMMANDS[args.command](cfg, args)
        return _stage(cfg, args)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        log.debug("the error's traceback (R1_LOG_LEVEL=DEBUG)", exc_info=True)
        print(f"r1: error{_where()}: {error_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything else keeps its traceback, after the one line a job report shows
        print(f"r1: error{_where()}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
              file=sys.stderr)
        raise
    finally:
        from .placement import release_placement

        release_placement()


def put_cwd_on_path() -> None:
    """Import from the working directory as ``python -m`` does (the ``r1`` script's own ``sys.path[0]`` is the
    venv's bin): a user's reward module next to their config is found by ``module:function``. ``PYTHONPATH``
    is already on the path; the Ray workers of a local run get both (:func:`pipeline.cluster.worker_pythonpath`)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def error_line(exc: BaseException) -> str:
    """The error's message; an actor's error (Ray's ``RayTaskError``: a traceback over many lines) as its cause's
    own message, e.g. a reward worker's :class:`rewards.RewardFailure`."""
    ray_exceptions = sys.modules.get("ray.exceptions")  # only a run that used Ray can have an actor's error
    if ray_exceptions is not None and isinstance(exc, ray_exceptions.RayTaskError) and exc.cause is not None:
        cause = exc.cause
        text = str(cause).strip()
        known = isinstance(cause, (ConfigError, ValueError, FileNotFoundError, RuntimeError))
        return text if known and text else f"{type(cause).__name__}: {text.splitlines()[0] if text else ''}"
    return str(exc)


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

    _, table = run_eval(cfg, model=args.model, data=_eval_data(args), out=args.out, label=args.label)
    print(table)
    return 0


def _eval_data(args):
    """``--data`` with its source flags as a source (None: the config's split); flags without --data are refused."""
    from .data import EVAL_SOURCE_FLAGS, eval_source

    flags = {name: getattr(args, name) for name in EVAL_SOURCE_FLAGS}
    if not args.data:
        given = [f"--{name.replace('_', '-')}" for name, value in flags.items() if value is not None]
        if given:
            raise ConfigError(f"r1 eval: {', '.join(given)} map the columns of --data FILE; give --data")
        return None
    return eval_source(args.data, **flags)


def _stage(cfg, args) -> int:
    """`r1 <stage>`: run one stage of the recipe's table; print where its result went."""
    from .recipe import STAGES, run_stage_command, stage_of, stage_running

    # As the config's recipe variant has it; a stage it does not have (cold-start under R1-Zero): one line.
    stage = stage_of(cfg, next(s.name for s in STAGES if s.command == args.command))
    log.info("run dir: %s", cfg.run_dir())  # first: a submitted job's log says where its artifacts go
    with stage_running(stage.name):
        # Recorded (fingerprints) as `r1 run` records it, so `r1 run` continues from it, not over it.
        summary = run_stage_command(cfg, stage, out=args.out)
    _print_summary(summary)
    return 0


def _run(cfg, args) -> int:
    from .recipe import run_recipe

    log.info("run dir: %s", cfg.run_dir())

    run_recipe(cfg, start=args.start, until=args.until or cfg.recipe.until)
    if not args.no_report:
        from .report import write_report

        print(f"report: {write_report(cfg.run_dir(), variant=cfg.recipe.variant)}")
    return 0


def _score(cfg, args) -> int:
    from .score import score_file

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    result = score_file(cfg, args.completions, args.out, threads=args.threads)
    print(result.table)
    print(f"scored {result.rows} rows: {result.out}")
    return 0


def _r3_check(cfg, args) -> int:
    from .r3_check import run_r3_check

    result = run_r3_check(cfg, model=args.model, out=args.out, repeats=args.repeats)
    for name in ("without_r3", "with_r3", "shifted_routing"):
        r = result[name]
        line = (f"{name:>15}: router_mismatch_own {r['router_mismatch_own']:.4f}, token_mismatch_own "
                f"{r['token_mismatch_own']:.4f}, routing_coverage {r['routing_coverage']:.4f}")
        if "replay_plumbing_mismatch" in r:
            line += f", replay_plumbing_mismatch {r['replay_plumbing_mismatch']:.4f} (must be 0)"
        if "k3" in r:
            line += f", k3 {r['k3']:.2e}, |dlogp| > ln2 {r['frac_over_ln2']:.4f}"
        print(line)
    k3 = result["k3_paired"]
    print(f"k3 with - without R3, paired over {k3['rows']} rows: {k3['mean_row_diff_with_minus_without']:+.2e} "
          f"(standard error {k3['standard_error'] or float('nan'):.1e}); replaying other experts (ids + 1) moves "
          f"logprobs by {result['shifted_routing']['mean_abs_dlogp_other_experts']:.3f} on average")
    for part, o in result["overhead"].items():
        if part == "step":
            print(f"R3 overhead per step {100 * o['fraction']:+.1f}% ± {100 * o['fraction_se']:.1f}% "
                  f"(generation + update x {o['update_scale']:.1f}): {o['verdict']}")
        else:
            print(f"{part:>10} with/without R3: {o['mean_s_on']:.2f} s / {o['mean_s_off']:.2f} s, paired difference "
                  f"{o['paired_diff_s']:+.3f} ± {o['se_s']:.3f} s, ratio {o['ratio']:.3f} ± {o['ratio_se']:.3f} "
                  f"({o['pairs']} pairs): {o['verdict']}")
    print(f"routing bytes per token {result['routing_bytes_per_token']}")
    return 0


def _clean(args) -> int:
    """`r1 clean`: remove ``superseded/`` under the run dir (given, or the config's); print each and the bytes."""
    from .superseded import clean_superseded, human_bytes

    if args.run_dir and "=" in args.run_dir:  # an override, not a run dir
        args.overrides.insert(0, args.run_dir)
        args.run_dir = None
    run_dir = Path(args.run_dir) if args.run_dir else load_config(args.config, args.overrides).run_dir()
    removed = clean_superseded(run_dir, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path, size in removed:
        print(f"{verb} {path} ({human_bytes(size)})")
    total = sum(size for _, size in removed)
    print(f"{'would free' if args.dry_run else 'freed'} {human_bytes(total)} ({total} bytes) in {len(removed)} "
          f"superseded folder(s) of {run_dir}" if removed else f"nothing to clean: {run_dir} has no superseded folders")
    return 0


def _export(args) -> int:
    """`r1 export CKPT OUT`: the checkpoint's weights as an HF model dir (one process; any world size's shards)."""
    from trainer.checkpoint_export import export_checkpoint

    print(f"exported {args.checkpoint} -> {export_checkpoint(args.checkpoint, args.out, model_dir=args.model)}")
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
            "run": _run, "r3-check": _r3_check, "score": _score}  # and one per stage of the recipe's table (_stage)


if __name__ == "__main__":
    sys.exit(main())
