"""User errors and the one-line error every command line tool prints for them.

A :class:`UserError` is something the user can fix (bad input, a missing or damaged cache, a config
that does not match the cache); its message says what, which file and what to do. Every CLI runs
its ``main`` through :func:`run_cli`, which prints such an error as ONE line ``error: ...`` on stderr
and exits 2. ``--debug`` on the command line (or ``TESO_DEBUG=1`` in the environment) shows the
traceback instead. Anything else is a bug and raises as usual. A command line argparse rejects
(unknown flag, bad value) is a user error too: one line, not argparse's usage block.

>>> error_line(UserError("a.parquet: not a manifest\\n  (build it first)"))
'error: a.parquet: not a manifest (build it first)'
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, Sequence

DEBUG_ENV = "TESO_DEBUG"
DEBUG_FLAG = "--debug"
USER_ERROR_EXIT = 2


class UserError(Exception):
    """An error the user can act on; CLIs print it as one line (no traceback) and exit 2."""


class StageError(UserError, RuntimeError):
    """A stage cannot run or its output cannot be read; the message says where and why."""


class ConfigError(UserError, ValueError):
    """A command line option or config value is invalid; the message names it."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or package the command needs is not there; the message says how to get it."""


def error_line(exc: BaseException) -> str:
    """The one ``error: ...`` line a CLI prints (library messages may span lines)."""
    return "error: " + " ".join(str(exc).split())


def debug_enabled(argv: Sequence[str] | None = None) -> bool:
    return DEBUG_FLAG in (sys.argv[1:] if argv is None else argv) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


@contextmanager
def _one_line_argparse_errors():
    """argparse reports a bad command line by printing its usage block and exiting; inside this
    block the parser raises :class:`ConfigError` instead, so it gets the one ``error:`` line."""
    original = argparse.ArgumentParser.error

    def error(parser: argparse.ArgumentParser, message: str):
        raise ConfigError(f"{parser.prog}: {message} (see {parser.prog} --help)")

    argparse.ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original  # type: ignore[method-assign]


def run_cli(main: Callable[[list[str] | None], Any], argv: Sequence[str] | None = None, *,
            user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``main(argv)`` (``--debug`` removed from argv) and return its exit code.

    :class:`UserError` (and ``user_errors``, for libraries' own types such as a corrupt archive)
    becomes one ``error:`` line and 2, unless debugging; ``main``'s int return (or None = 0) passes
    through. Use as ``sys.exit(run_cli(main))`` under ``if __name__ == "__main__":``.
    """
    debug = debug_enabled(argv)
    if argv is None:  # main parses sys.argv itself (LightningCLI warns when given both)
        sys.argv = [a for a in sys.argv if a != DEBUG_FLAG]
    try:
        with _one_line_argparse_errors():
            code = main(None if argv is None else [a for a in argv if a != DEBUG_FLAG])
    except (UserError, *user_errors) as exc:
        if debug:
            raise
        print(error_line(exc), file=sys.stderr)
        return USER_ERROR_EXIT
    return code if isinstance(code, int) else 0
