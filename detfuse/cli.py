"""The `detfuse` command: one subcommand per stage; each imports its module only when it runs."""

import argparse
import sys

from detfuse.errors import UserError


def _data_check(args):
    from detfuse.data.check import run_check

    return run_check(args.dataset, policy=args.policy)


def _train(args):
    from detfuse.single_trial import run_train

    return run_train(args.config, args.overrides, out_dir=args.out, resume=args.resume, verbose=args.verbose)


def _tune(args):
    from ray_jobs.tune import run_tune

    return run_tune(args.config, args.overrides, resume=args.resume, verbose=args.verbose)


def _check(args):
    from ray_jobs.tune import check_experiment

    return check_experiment(args.config, args.overrides, verbose=args.verbose)


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


def build_parser():
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

    train = _command(commands, "train", "run one trial of either family outside Tune (for debugging)", _train)
    train.add_argument("config", help="trial config YAML (architecture, dataset, max_epochs, hparams, ...)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. hparams.lr=0.01 max_epochs=3")
    train.add_argument("--out", help="run directory for checkpoints and metrics (default runs/train/ARCH-TIME)")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")

    _experiment_arguments(_command(
        commands, "check", "validate an experiment config: dataset, search spaces, resources, storage", _check))
    tune = _command(commands, "tune", "ASHA search over both families on the Ray cluster", _tune)
    _experiment_arguments(tune)
    tune.add_argument("--resume", action="store_true", help="continue the experiment from its storage")
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
