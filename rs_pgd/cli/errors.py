"""Turn library errors into one-line CLI messages with exit status 2, never a traceback."""

import logging
import os
import signal
import sys
import warnings

import click

from rs_pgd.errors import RsPgdError


class InputError(click.ClickException):
    """A bad input reported as ``Error: <message>``, exit status 2."""

    exit_code = 2


def _one_line(message) -> str:
    return " ".join(str(message).split())


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is at each record (click's test runner swaps it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Send the library's log lines (``rs_pgd.*`` loggers) to stderr as plain lines.

    INFO by default (what was chosen and why, epoch summaries), DEBUG with ``-v``, WARNING with ``-q``.
    """
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logger = logging.getLogger("rs_pgd")
    if not any(getattr(h, "_rs_pgd", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._rs_pgd = True
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"Warning: {_one_line(message)}", err=True)


class ErrorHandlingGroup(click.Group):
    """A click group that reports :class:`RsPgdError` (and common OS errors on inputs) in one line, exit 2."""

    def invoke(self, ctx):
        if not os.environ.get("RS_PGD_DEBUG"):
            warnings.showwarning = _show_warning
            # GDAL's own "ERROR 1: ..." lines (printed outside rasterio's handler, e.g. on a full disk) would break
            # the one-line rule; the error itself still reaches us as an exception
            os.environ.setdefault("CPL_LOG", os.devnull)
            # rasterio logs GDAL errors; without a handler Python prints them raw to stderr
            logging.getLogger("rasterio").addHandler(logging.NullHandler())
        from rs_pgd.raster import gdal_env

        try:
            with gdal_env():  # before the first read: GDAL's block cache capped for every command
                return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            # one line, like every other error: "Error: <problem> (see 'rs-pgd fit --help')"
            where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            raise InputError(f"{_one_line(exc.format_message())} (see '{where} --help')") from None
        except RsPgdError as exc:
            if os.environ.get("RS_PGD_DEBUG"):
                raise
            raise InputError(_one_line(exc)) from None
        except MemoryError:
            raise InputError("out of memory; use a smaller --tile or --batch-size") from None
        except OSError as exc:
            if os.environ.get("RS_PGD_DEBUG"):
                raise
            # e.g. disk full while writing: the outputs are written atomically, so nothing is left half-written
            raise InputError(f"{_one_line(exc)}; check the path and free space, then run again") from None
        except KeyboardInterrupt as exc:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
            click.echo(f"Interrupted: {exc}" if str(exc) else "Interrupted.", err=True)
            sys.exit(130)
