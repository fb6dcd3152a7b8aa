"""The ``nested-diffusion`` command: builds the parser from one module per subcommand family and dispatches.

To add a subcommand: a module in ``cli/`` with ``add_parser(subparsers)`` and ``run(args) -> exit code``, one
``add_parser`` call in ``build_parser`` and one entry in ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import eval as cli_eval
from . import api, calibrate, generate, restore, restore_table, sample, serve, train

COMMANDS = {
    "generate": generate.run,
    "train": train.run_train,
    "train-classifier": train.run_train_classifier,
    "quality": train.run_quality,
    "eval": cli_eval.run,
    "restore": restore.run,
    "restore-table": restore_table.run,
    "sample": sample.run_sample,
    "merge": sample.run_merge,
    "serve": serve.run,
    "calibrate": calibrate.run,
    "api": api.run,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nested-diffusion", description=(
        "Anytime image generation with Nested Diffusion. An outer DDIM process uses a complete inner diffusion "
        "run as its denoiser, so a finished image is available after every inner run."))
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    generate.add_parser(sub)
    train.add_parsers(sub)
    cli_eval.add_parser(sub)
    restore.add_parser(sub)
    restore_table.add_parser(sub)
    sample.add_parser(sub)
    serve.add_parser(sub)
    calibrate.add_parser(sub)
    api.add_parser(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
