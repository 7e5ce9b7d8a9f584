"""Turn library errors into one-line CLI messages with exit status 2, never a traceback."""

import ctypes
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

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


# -- libtiff's own lines ----------------------------------------------------------------------------------------
# GDAL gives every TIFF it opens a libtiff error handler of its own (TIFFOpenOptionsSetErrorHandlerExtR) that turns
# messages into CPLErrors, which rasterio raises. But GDAL's I/O hooks for libtiff (_tiffWriteProc, _tiffSeekProc
# in tif_vsi.c) report a failed write through libtiff's *global* handler, whose default prints "module: message."
# straight to file descriptor 2: on a full disk "_tiffWriteProc: No space left on device." and a _tiffSeekProc line
# came before rs-pgd's one Error line, untouched by CPL_LOG or any Python logging. While a command runs, the
# global handlers of every loaded libtiff send those lines to the ``rs_pgd.libtiff`` logger at DEBUG (shown with
# -v); the failure itself still reaches rs-pgd as GDAL's exception.
_TIFF_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)
_libtiff_logger = logging.getLogger("rs_pgd.libtiff")


def _vsnprintf():
    try:
        function = ctypes.CDLL(None).vsnprintf  # the C library of this process (Linux, macOS)
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


_format_c = _vsnprintf()


def _libtiff_message(module, fmt, args) -> str:
    text = (fmt or b"").decode("utf-8", "replace")
    if _format_c is not None and fmt:
        buffer = ctypes.create_string_buffer(2048)
        _format_c(buffer, len(buffer), fmt, args)  # va_list arrives as a pointer on x86-64, arm64 and Windows
        text = buffer.value.decode("utf-8", "replace")
    return f"{module.decode('utf-8', 'replace')}: {text}" if module else text


@_TIFF_HANDLER
def _libtiff_error(module, fmt, args):
    _libtiff_logger.debug("libtiff error: %s", _libtiff_message(module, fmt, args))


@_TIFF_HANDLER
def _libtiff_warning(module, fmt, args):
    _libtiff_logger.debug("libtiff warning: %s", _libtiff_message(module, fmt, args))


def loaded_libtiffs() -> list:
    """The libtiff libraries loaded in this process (rasterio's GDAL links one), as ctypes libraries."""
    import rasterio  # loads GDAL and so its libtiff

    paths = set()
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and os.path.basename(fields[5].strip()).startswith("libtiff"):
                    paths.add(fields[5].strip())
    except OSError:  # not Linux: the libraries bundled in rasterio's wheel (macOS .dylibs)
        base = Path(rasterio.__file__).parent
        paths.update(str(p) for folder in (base / ".dylibs", base.parent / "rasterio.libs")
                     for p in folder.glob("libtiff*"))
    libraries = []
    for path in sorted(paths):
        try:
            library = ctypes.CDLL(path)  # the already loaded copy: the same handle, not a second library
            for name in ("TIFFSetErrorHandler", "TIFFSetWarningHandler"):
                getattr(library, name).argtypes = [ctypes.c_void_p]
                getattr(library, name).restype = ctypes.c_void_p
        except (OSError, AttributeError):
            continue
        libraries.append(library)
    return libraries


def route_libtiff_messages():
    """Send libtiff's global error and warning lines to the debug log; return a function that restores them."""
    if _format_c is None:
        return lambda: None
    previous = []
    for library in loaded_libtiffs():
        previous.append((library.TIFFSetErrorHandler, library.TIFFSetErrorHandler(
            ctypes.cast(_libtiff_error, ctypes.c_void_p))))
        previous.append((library.TIFFSetWarningHandler, library.TIFFSetWarningHandler(
            ctypes.cast(_libtiff_warning, ctypes.c_void_p))))

    def restore():
        for setter, handler in previous:
            setter(handler)

    return restore


class ErrorHandlingGroup(click.Group):
    """A click group that reports :class:`RsPgdError` (and common OS errors on inputs) in one line, exit 2."""

    def invoke(self, ctx):
        restore_libtiff = None
        if not os.environ.get("RS_PGD_DEBUG"):
            restore_libtiff = route_libtiff_messages()  # one line on a full disk, not libtiff's first
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
        finally:
            if restore_libtiff is not None:
                restore_libtiff()
