"""The `detfuse` command: one subcommand per stage; each imports its module only when it runs."""

import argparse
import sys

from detfuse.core.errors import UserError


def _data_check(args):
    from detfuse.core.data.check import run_check

    return run_check(args.dataset, policy=args.policy)


def _weights_fetch(args):
    from detfuse.stages.weights_fetch import run_weights_fetch

    return run_weights_fetch(args.names, args.to, args.sha256 or (), _s3_settings(args))


def _train(args):
    from detfuse.stages.local_trial import run_train

    return run_train(args.config, args.overrides, out_dir=args.out, resume=args.resume, verbose=args.verbose)


def _tune(args):
    from detfuse.stages.tune import run_tune

    return run_tune(args.config, args.overrides, resume=args.resume, verbose=args.verbose)


def _check(args):
    from detfuse.stages.tune import check_experiment

    return check_experiment(args.config, args.overrides, verbose=args.verbose)


def parse_top(values):
    """--top values ("K" for every family, "FAMILY=K" for one) -> (K for every family, {family: K})."""
    from detfuse.stages.ensemble import DEFAULT_TOP

    default, per_family = DEFAULT_TOP, {}
    for value in values or ():
        family, _, count = value.rpartition("=")
        try:
            k = int(count)
        except ValueError:
            k = -1
        if k < 0 or (family == "" and "=" in value):
            raise UserError(f"--top {value}: write K (for every family) or FAMILY=K, with K a whole number >= 0")
        if family:
            per_family[family] = k
        else:
            default = k
    return default, per_family


def _ensemble(args):
    from detfuse.stages.ensemble import run_ensemble

    top, top_per_family = parse_top(args.top)
    return run_ensemble(args.experiment, top, top_per_family, method=args.method, dataset=args.dataset,
                        gpus_per_member=args.gpus_per_member, cpus_per_member=args.cpus_per_member, seed=args.seed,
                        fit_mode=args.fit_mode, tta=args.tta, verbose=args.verbose)


def _s3_settings(args):
    from dataclasses import fields

    from detfuse.core.storage.s3 import S3Settings

    return S3Settings(**{f.name: getattr(args, f.name) for f in fields(S3Settings) if hasattr(args, f.name)})


def _export(args):
    from detfuse.stages.export import run_export

    return run_export(args.experiment, args.to, _s3_settings(args))


def _predict(args):
    from detfuse.stages.predict import run_predict

    return run_predict(args.bundle, args.images, args.out, device=args.device, draw_threshold=args.draw_threshold,
                       settings=_s3_settings(args), verbose=args.verbose)


def _report(args):
    from detfuse.stages.report import run_report

    return run_report(args.experiment, args.out)


def _pipeline(args):
    from detfuse.stages.pipeline import run_pipeline

    return run_pipeline(args.config, args.overrides, verbose=args.verbose)


def _command(commands, name, help, handler):
    parser = commands.add_parser(name, help=help, description=help)
    # also accepted after the subcommand; SUPPRESS keeps a `detfuse -v CMD` from being reset to False
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show the frameworks' own logs")
    parser.set_defaults(handler=handler)
    return parser


def _experiment_arguments(parser):
    parser.add_argument("config", help="experiment config YAML (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. name=try2 spaces.0.num_samples=4")


def _s3_arguments(parser, uploads):
    """S3 settings on top of boto3's configuration; credentials come only from boto3's chain, never from flags."""
    from detfuse.core.storage.s3 import RETRY_MODES, SSE_MODES, S3Settings

    default = S3Settings()
    parser.add_argument("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL or ~/.aws/config, else AWS)")
    parser.add_argument("--region", help="S3 region (default: AWS_DEFAULT_REGION or ~/.aws/config)")
    parser.add_argument("--retry-mode", choices=RETRY_MODES, default=default.retry_mode,
                        help="botocore retry mode: exponential backoff on throttling and connection errors; adaptive "
                             f"also slows down while throttled (default {default.retry_mode})")
    parser.add_argument("--max-attempts", type=int, default=default.max_attempts,
                        help=f"attempts per S3 request (default {default.max_attempts})")
    if uploads:
        parser.add_argument("--sse", choices=SSE_MODES, help="server-side encryption of uploaded files")
        parser.add_argument("--sse-kms-key-id", help="KMS key for --sse aws:kms (default: the bucket's key)")
        parser.add_argument("--part-size-mb", type=int, default=default.part_size_mb,
                            help=f"files above this size are uploaded in parts of this size, several at once "
                                 f"(default {default.part_size_mb}, minimum 5)")


def build_parser():
    from detfuse.stages.ensemble_evaluation import CROSS_FIT_BELOW, FIT_MODES
    from detfuse.core.fusion import METHODS
    from detfuse.stages.member_predictions import DEFAULT_TTA, TTA_MODES

    parser = argparse.ArgumentParser(
        prog="detfuse", description="Search Detectron2 and YOLOv5 detectors with Ray Tune and fuse the best of both."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the frameworks' own logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="inspect and validate datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = _command(data_commands, "check",
                     "validate a COCO dataset and print its summary (exit 2 when it has problems)", _data_check)
    check.add_argument("dataset", help="dataset directory, dataset YAML, s3:// URI, or 'builtin'")
    check.add_argument(
        "--policy", choices=["error", "clip", "drop"], default="error",
        help="what to do with bad boxes/annotations: report them (default), clip boxes into the image, or drop them",
    )

    weights = commands.add_parser("weights", help="stage pretrained weights for clusters without internet access")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    fetch = _command(weights_commands, "fetch", "download pretrained weights once, verify them and copy them to a "
                     "directory or S3; prints the `weights:` lines to use", _weights_fetch)
    fetch.add_argument("names", nargs="+", metavar="NAME",
                       help="http(s):// URL, detectron2:// model-zoo name, Ultralytics release name (yolov5su.pt), "
                            "s3:// URI or file")
    fetch.add_argument("--to", required=True, metavar="DIR_OR_S3", help="a directory or s3://BUCKET/PREFIX")
    fetch.add_argument("--sha256", action="append", metavar="HEX",
                       help="expected sha256 of each NAME, in order (repeat once per NAME)")
    _s3_arguments(fetch, uploads=True)

    train = _command(commands, "train", "run one trial of either family outside Tune (for debugging)", _train)
    train.add_argument("config", help="trial config YAML (architecture, dataset, max_epochs, hparams, ...)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. hparams.lr=0.01 max_epochs=3")
    train.add_argument("--out", help="run directory for checkpoints and metrics (default runs/train/ARCH-TIME)")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")

    _experiment_arguments(_command(
        commands, "check", "validate an experiment config: dataset, search spaces, resources, storage", _check))
    _experiment_arguments(_command(
        commands, "pipeline", "tune -> ensemble -> export in one job; a re-run resumes at the first unfinished stage",
        _pipeline))
    tune = _command(commands, "tune", "ASHA search over both families on the Ray cluster", _tune)
    _experiment_arguments(tune)
    tune.add_argument("--resume", action="store_true", help="continue the experiment from its storage")

    ensemble = _command(commands, "ensemble",
                        "fuse the top checkpoints of each family of a tuned experiment (fitted on val)", _ensemble)
    ensemble.add_argument("experiment", help="the experiment's URI: <storage>/<name>, a local path or s3://")
    ensemble.add_argument("--top", action="append", metavar="K|FAMILY=K",
                          help="members per family: K for every family (default 3), FAMILY=K for one; repeatable")
    ensemble.add_argument("--method", choices=METHODS, default="wbf",
                          help="fusion method (default wbf: weighted boxes fusion)")
    ensemble.add_argument("--dataset", help="dataset spec (default: the experiment's, from its experiment.json)")
    ensemble.add_argument("--gpus-per-member", type=float,
                          help="GPU fraction per member's inference task (default 0.25 when the cluster has GPUs)")
    ensemble.add_argument("--cpus-per-member", type=float, default=1.0, help="CPUs per inference task (default 1)")
    ensemble.add_argument("--fit-mode", choices=FIT_MODES, default="auto",
                          help="where choices are fitted and reported: cross (fit on one half of val, report on the "
                               "other, both ways, and average), split (fit on one half, report on the other) or auto "
                               f"(default: fit on val and report on test when test has labels, else cross below "
                               f"{CROSS_FIT_BELOW} val images, else split)")
    ensemble.add_argument("--seed", type=int, default=0, help="seed of the split of val into halves")
    ensemble.add_argument("--tta", choices=TTA_MODES, default=DEFAULT_TTA,
                          help="test-time augmentation: hflip also fuses each trial's predictions on the images "
                               f"mirrored left-right, as member <trial_id>+hflip (default {DEFAULT_TTA})")

    export = _command(commands, "export", "write a versioned, checksummed bundle of the best checkpoints and the "
                      "ensemble to a directory or S3, then point latest.json at it", _export)
    export.add_argument("experiment", help="the experiment's URI: <storage>/<name>, a local path or s3://")
    export.add_argument("--to", required=True, metavar="URI", help="destination: a directory or s3://BUCKET/PREFIX")
    _s3_arguments(export, uploads=True)

    report = _command(commands, "report", "one self-contained HTML page (and its charts as PNG files) on what a search "
                      "did: learning curves with ASHA's stops, hyperparameters, per-class AP50, the ensemble's gain, "
                      "compute spent and saved", _report)
    report.add_argument("experiment", help="the experiment's URI: <storage>/<name>, a local path or s3://")
    report.add_argument("--out", metavar="FILE", help="the HTML file to write, charts beside it as "
                        "<name>_<chart>.png (default <experiment>/report/report.html)")

    predict = _command(commands, "predict", "run an exported bundle's fused ensemble on images; writes COCO JSON, "
                       "CSV and images with boxes", _predict)
    predict.add_argument("bundle", help="a bundle (directory or s3:// prefix), its latest.json, or the export "
                         "destination holding latest.json")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or directories of images")
    predict.add_argument("--out", required=True, help="output directory")
    predict.add_argument("--device", help="torch device (default cuda when available, else cpu)")
    predict.add_argument("--draw-threshold", type=float, default=0.3,
                         help="draw detections scoring at least this on the images (default 0.3); the JSON and CSV "
                              "hold all of them")
    _s3_arguments(predict, uploads=False)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
