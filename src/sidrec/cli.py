"""`sidrec <stage> ...`: one subcommand per pipeline stage, each a few lines over the library.

Settings come from flags for the common ones and `key=value` for any config field.
A user mistake prints one line (`sidrec: error: ...`) and exits with code 2.

Each verb's parser and command live together, by what the verb works on: the run
directory's stages in `cli_stages`, a trained model's answers in `cli_serve`, the bench and
its report in `cli_results`. This module assembles the parser and runs a command.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from collections.abc import Callable

from sidrec import cli_results, cli_serve, cli_stages
from sidrec.errors import SidrecError


def build_parser() -> argparse.ArgumentParser:
    """`sidrec COMMAND ...`: each verb's parser comes from its module (listed in the order
    of `sidrec --help`)."""
    parser = argparse.ArgumentParser(prog="sidrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_verb in (cli_stages.add_data, cli_stages.add_embed, cli_stages.add_tokenize,
                     cli_stages.add_train, cli_stages.add_evaluate, cli_results.add_bench,
                     cli_results.add_report, cli_serve.add_recommend, cli_serve.add_serve,
                     cli_stages.add_analyze):
        add_verb(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value pairs may follow the flags too (plain parse_args would reject them there,
    # having already closed the positionals at the first flag).
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        if getattr(args, "run_dir", None) and not getattr(args, "read_only", False):
            from sidrec.run import RunDir

            RunDir(args.run_dir).check_writable()  # a file, or read-only: before any work
        with warnings.catch_warnings():  # a library warning is one line, not source code
            warnings.showwarning = _one_line_warning
            func(args)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError:  # `sidrec data stats RUN | head`: the reader has had enough
        _quiet_stdout()
        return 141  # 128 + SIGPIPE, what the shell reports for a command cut off so
    except SidrecError as e:
        print(f"sidrec: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # only the run directory's own (or a full disk): else a bug
        message = _os_error(e, args)
        if message is None:
            raise
        print(f"sidrec: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sidrec: interrupted", file=sys.stderr)
        return 130
    return 0


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of the lines still
    buffered for the closed pipe raises nothing (the recipe of Python's signal docs)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout with no file behind it (captured): no flush
        pass


def _one_line_warning(message: Warning | str, *_: object, **__: object) -> None:
    print(f"sidrec: warning: {message}", file=sys.stderr)


def _os_error(e: OSError, args: argparse.Namespace) -> str | None:
    """One line for an OSError on a path in (or above) the run or model directory of this
    command, or for a full disk; None for any other (a bug: its traceback is shown)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}; free some space (or pass another run directory) and re-run"
    roots = [getattr(args, name, None) for name in ("run_dir", "model_dir")]
    if getattr(args, "func", None) is cli_stages.cmd_prepare and not args.run_dir:
        roots.append(cli_stages.default_run_dir(args.source))
    if e.filename is None:
        return None
    path = os.path.abspath(os.fsdecode(e.filename))
    for root in (os.path.abspath(r) for r in roots if r):
        if path == root or path.startswith(root + os.sep) or root.startswith(path + os.sep):
            hint = ("make it writable or pass another run directory"
                    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
                    else "check the run directory")
            return f"{e.filename}: {e.strerror or type(e).__name__}; {hint}"
    return None


if __name__ == "__main__":
    sys.exit(main())
