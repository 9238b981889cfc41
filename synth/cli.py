"""The `synth` command: parses arguments, calls one function per command, maps errors to exits."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from synth import __version__
from synth.errors import SynthError, Terminated

DESCRIPTION = """\
synth makes synthetic training images for rare classes: a YAML spec names the real data, the
label distribution you want and the model and LoRA per class; `synth run` plans exactly the
missing images, renders them (SDXL + LoRA, over a Ray cluster), writes Parquet shards with
full provenance, and, with eval.enabled, reports whether they beat duplicating real images."""
EPILOG = """\
example:
  synth validate specs/quickstart.yaml   # check a spec, and everything run would refuse
  synth run specs/quickstart.yaml        # plan, render, write shards, evaluate; resumable

exit codes: 0 done; 1 a run failed (re-run the same command to resume); 2 bad input or an
unusable path (the message names it and the fix); 130 Ctrl-C; 143 SIGTERM.

`synth schema` prints the spec's JSON Schema (every key described) for editors; the README
has every spec key with an example."""
SPEC_HELP = "the spec YAML file"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="synth: %(levelname)s: %(message)s")
    # SIGTERM (what cluster schedulers send) gets Ctrl-C's clean stop: writes in progress are
    # undone and run.json records the interruption.
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main_thread else None
    try:
        return args.command(args) or 0
    except SynthError as err:
        print(f"synth: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:
        how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        print(f"synth: {how}; re-run the same command to resume", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synth",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"synth {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check a spec")
    validate.add_argument("spec", type=Path, help=SPEC_HELP)
    validate.set_defaults(command=_validate)

    schema = commands.add_parser("schema", help="print the spec's JSON Schema, for editors")
    schema.set_defaults(command=_schema)

    plan = commands.add_parser("plan", help="print real, target and synthetic counts per class")
    plan.add_argument("spec", type=Path, help=SPEC_HELP)
    plan.add_argument("--json", action="store_true", help="print JSON instead of a table")
    plan.set_defaults(command=_plan)

    run = commands.add_parser("run", help="generate the planned images into Parquet shards")
    run.add_argument("spec", type=Path, help=SPEC_HELP)
    run.add_argument(
        "--out", help="output folder or URL, s3://... (default: the spec's output.dir)"
    )
    run.add_argument(
        "--overwrite", action="store_true", help="replace a run of a different spec in --out"
    )
    run.add_argument(
        "--in-process", action="store_true", help="render in this process, without Ray (debug)"
    )
    run.set_defaults(command=_run)

    evaluate = commands.add_parser(
        "eval", help="train classifiers on real vs real+synthetic and write the report"
    )
    evaluate.add_argument("target", type=Path, help="a spec, or a run folder holding spec.yaml")
    evaluate.set_defaults(command=_eval)

    data = commands.add_parser("data", help="real data: prepare a download for synth")
    data_commands = data.add_subparsers(required=True, metavar="ACTION")
    prepare = data_commands.add_parser(
        "prepare", help="preprocess an IU download into a manifest of frontal images"
    )
    prepare.add_argument("spec", type=Path, nargs="?", help="take the source from this spec")
    prepare.add_argument("--source", choices=["iu_xray"], help="the source kind, without a spec")
    prepare.add_argument("--path", type=Path, help="the downloaded folder, without a spec")
    prepare.add_argument("--out", type=Path, required=True, help="folder for images+manifest")
    prepare.add_argument("--size", type=int, default=1024, help="output side in pixels")
    prepare.add_argument(
        "--tokenizer", help="model folder or hub id whose CLIP tokenizer counts caption tokens"
    )
    prepare.set_defaults(command=_data_prepare)

    train = commands.add_parser("train-lora", help="train an SDXL LoRA on a prepared manifest")
    train.add_argument("config", type=Path, help="the training config YAML")
    train.set_defaults(command=_train_lora)

    preview = commands.add_parser("preview", help="render K samples of a class as a PNG grid")
    preview.add_argument("spec", type=Path, help=SPEC_HELP)
    preview.add_argument("--class", dest="label", required=True, help="the class to preview")
    preview.add_argument("-n", type=int, default=4, help="how many samples (default 4)")
    preview.add_argument("--out", type=Path, required=True, help="the grid PNG to write")
    preview.set_defaults(command=_preview)

    export = commands.add_parser(
        "export", help="write a training-ready dataset: real splits plus the run's images"
    )
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run folder")
    export.add_argument("--out", type=Path, required=True, help="a new folder for the dataset")
    export.add_argument(
        "--fraction", type=float, default=1.0, help="share of each class's synthetic images (1)"
    )
    export.add_argument(
        "--include-rejected", action="store_true", help="also the renders curation rejected"
    )
    export.add_argument(
        "--format", choices=["parquet", "imagefolder"], default="parquet",
        help="parquet (load_dataset) or imagefolder (split/label/file)",
    )  # fmt: skip
    export.set_defaults(command=_export)

    studio = commands.add_parser(
        "studio", help="browse runs, compare and generate images in a local web app"
    )
    studio.add_argument("runs", type=Path, nargs="*", metavar="RUN_DIR", help="run folders to open")
    studio.add_argument("--spec", type=Path, help="open this spec's output.dir (and its model)")
    studio.add_argument("--host", default="127.0.0.1", help="address to serve on (127.0.0.1)")
    studio.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    studio.add_argument(
        "--token", help="a secret every request must carry; required with a non-local --host"
    )
    studio.set_defaults(command=_studio)
    return parser


def _validate(args: argparse.Namespace) -> None:
    from synth.plan import plan_for_spec
    from synth.preflight import check_spec_files
    from synth.sources import real_counts
    from synth.spec import load_spec

    spec = load_spec(args.spec)
    plan = plan_for_spec(spec, real_counts(spec))
    check_spec_files(spec, plan)  # what `synth run` would refuse, without loading a model
    _warn_if_too_large(spec, plan)
    print(
        f"{args.spec}: valid; {plan.total_synthetic} synthetic images in {plan.num_shards} shards"
    )


def _warn_if_too_large(spec, plan) -> None:
    from synth.plan import size_problem

    problem = size_problem(plan, spec.run.max_images)
    if problem:
        print(f"synth: warning: {problem}; synth run will refuse it", file=sys.stderr)


def _schema(args: argparse.Namespace) -> None:
    from synth.spec import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2))


def _plan(args: argparse.Namespace) -> None:
    from synth.plan import plan_for_spec
    from synth.sources import real_counts
    from synth.spec import load_spec

    spec = load_spec(args.spec)
    counts = real_counts(spec)
    plan = plan_for_spec(spec, counts)
    if args.json:
        classes = {
            c.label: {"real": c.real, "target": c.target, "synthetic": c.synthetic}
            for c in plan.classes
        }
        print(json.dumps({"classes": classes, "total_synthetic": plan.total_synthetic}))
        return
    width = max(len("class"), *(len(c.label) for c in plan.classes))
    print(f"{'class':<{width}}  {'real':>8}  {'target':>8}  {'synthetic':>9}")
    for c in plan.classes:
        print(f"{c.label:<{width}}  {c.real:>8}  {c.target:>8}  {c.synthetic:>9}")
    print(
        f"{'total':<{width}}  {sum(c.real for c in plan.classes):>8}  "
        f"{sum(c.target for c in plan.classes):>8}  {plan.total_synthetic:>9}"
    )
    note = f"real images counted from: {counts.counted_from}"
    if counts.ignored_rows:
        note += f"; {counts.ignored_rows} row(s) with labels outside source.labels ignored"
    print(f"{note}; {plan.num_shards} shard(s) of up to {spec.output.shard_size}")
    from synth.throughput import describe_cost

    print("\n".join(describe_cost(spec, plan.total_synthetic)))
    _warn_if_too_large(spec, plan)


def _run(args: argparse.Namespace) -> None:
    from synth.run import run_spec
    from synth.spec import load_spec

    spec = load_spec(args.spec)
    if spec.eval.enabled:
        from eval.evaluate import check_can_evaluate

        check_can_evaluate(spec)  # before generating: a refusal after hours of GPU time is late
    summary = run_spec(
        spec,
        args.out,
        overwrite=args.overwrite,
        in_process=args.in_process,
        on_plan=lambda plan: _announce(spec, plan),
    )
    if summary.shards_written == 0:
        print(f"{summary.out_dir}: nothing to do; all {summary.shards_total} shard(s) complete")
    else:
        print(
            f"{summary.out_dir}: wrote {summary.shards_written} shard(s), reused "
            f"{summary.shards_reused}; {summary.images_per_second:.2f} images/s, "
            f"{summary.seconds:.1f} s in all"
        )
    if summary.curation is not None:
        from synth.curate.summary import describe_acceptance

        print(describe_acceptance(summary.curation))
    if spec.eval.enabled:
        _report_eval(spec, summary.out_dir)


def _announce(spec, plan) -> None:
    """The plan's size and estimated cost, before anything starts."""
    from synth.throughput import describe_cost

    print(f"{spec.name}: {plan.total_synthetic:,} synthetic images in {plan.num_shards} shard(s)")
    print("\n".join(describe_cost(spec, plan.total_synthetic)), flush=True)


def _eval(args: argparse.Namespace) -> None:
    from synth.spec import load_spec
    from synth.storage import location

    run_dir = args.target if args.target.is_dir() else None
    spec = load_spec(run_dir / "spec.yaml" if run_dir else args.target)
    _report_eval(spec, location(run_dir or spec.output.dir))


def _report_eval(spec, run_dir) -> None:
    from eval.evaluate import evaluate
    from eval.report import headline, untrained_sentences

    result = evaluate(spec, run_dir)
    for line in [*headline(result), *untrained_sentences(result)]:
        print(line)
    print(f"report: {run_dir / 'eval' / 'report.html'} ({result.seconds:.1f} s)")


def _data_prepare(args: argparse.Namespace) -> None:
    from synth.errors import SpecError
    from synth.sources.prepare import prepare_iu
    from synth.spec import IUXraySource, load_spec

    if args.spec is not None:
        source = load_spec(args.spec).source
        if not isinstance(source, IUXraySource):
            raise SpecError(f"{args.spec}: source.kind is {source.kind}; prepare needs iu_xray")
    elif args.source == "iu_xray" and args.path is not None:
        source = IUXraySource(
            kind="iu_xray", path=args.path.resolve(), labels=["opacity", "normal"]
        )
    else:
        raise SpecError("give a SPEC, or --source iu_xray --path DIR")
    if args.size < 8:
        raise SpecError(f"--size {args.size}: give at least 8 pixels")
    summary = prepare_iu(source, args.out.resolve(), args.size, args.tokenizer)
    print(summary.table)
    funnel_json = summary.manifest.parent / "funnel.json"
    print(f"{summary.manifest}: {summary.rows} rows; funnel in {funnel_json}")


def _train_lora(args: argparse.Namespace) -> None:
    from synth.spec import load_training_config
    from synth.train_lora import train_lora

    summary = train_lora(load_training_config(args.config))
    resumed = f", resumed from step {summary.resumed_from}" if summary.resumed_from else ""
    print(
        f"{summary.lora_file}: {summary.steps} steps{resumed}, final loss "
        f"{summary.losses[-1]:.4f}, {summary.steps_per_second:.2f} steps/s"
    )


def _preview(args: argparse.Namespace) -> None:
    from synth.preview import preview_class
    from synth.spec import load_spec

    spec = load_spec(args.spec)
    written = preview_class(spec, args.label, args.n, args.out)
    print(f"{args.out}: grid of {len(written)} samples; single PNGs in {written[0].parent}")


def _export(args: argparse.Namespace) -> None:
    from synth.export import export_run

    summary = export_run(args.run_dir, args.out, args.fraction, args.include_rejected, args.format)
    splits = ", ".join(f"{split} {rows:,}" for split, rows in summary.rows.items())
    print(
        f"{summary.out}: {splits} rows ({summary.synthetic:,} synthetic in train); "
        f"{summary.seconds:.1f} s"
    )


def _studio(args: argparse.Namespace) -> None:
    from synth.errors import SpecError
    from synth.spec import load_spec
    from synth.storage import is_url
    from synth.studio import serve

    folders = list(args.runs)
    if args.spec is not None:
        out = load_spec(args.spec).output.dir  # output.dir, or runs/NAME
        if is_url(out):
            raise SpecError(
                f"output.dir {out}: the studio opens local run folders; copy the run here "
                "(aws s3 sync, gsutil rsync) and give its folder"
            )
        folders.append(Path(out))
    if not folders:
        raise SpecError("give RUN_DIR(s) to open, or --spec SPEC for its output.dir")
    try:
        serve(folders, args.host, args.port, args.token)
    except KeyboardInterrupt:
        return


if __name__ == "__main__":
    sys.exit(main())
