"""Subcommands of `modelopt-fork`, one module each, found by :func:`modelopt_fork.cli.build_parser`.

Each module defines ``register(sub)``, which adds its parser to the argparse
subparsers ``sub`` and sets ``func`` (called with the parsed args, returns the
exit code). Keep the work itself in a topical package; the module here only
parses arguments and prints.
"""
