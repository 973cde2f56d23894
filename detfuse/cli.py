"""The `detfuse` command. Each subcommand imports its module lazily so `detfuse --help` stays fast."""

import argparse
import sys

from detfuse.errors import UserError


def _data_check(args):
    from detfuse.data.check import run_check

    return run_check(args.dataset, policy=args.policy)


def build_parser():
    parser = argparse.ArgumentParser(prog="detfuse", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="show the frameworks' own logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="inspect and validate datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = data_commands.add_parser(
        "check", help="validate a COCO dataset and print its summary (exit 2 when it has problems)"
    )
    check.add_argument("dataset", help="dataset directory, dataset YAML, s3:// URI, or 'builtin'")
    check.add_argument(
        "--policy", choices=["error", "clip", "drop"], default="error",
        help="what to do with bad boxes/annotations: report them (default), clip boxes into the image, or drop them",
    )
    check.set_defaults(handler=_data_check)
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
