"""Root click group of ``rs-pgd``; registered as the console script and as the ``rio pgd`` plugin.

This module builds only the group. Each command lives in its own module and imports the library inside its
body, so that ``rio`` (which imports every plugin at start-up) never pays for torch.
"""

import click

from rs_pgd import __version__
from rs_pgd.cli.demo import demo
from rs_pgd.cli.errors import ErrorHandlingGroup, configure_logging
from rs_pgd.cli.evaluate import evaluate
from rs_pgd.cli.export import export
from rs_pgd.cli.fit import fit
from rs_pgd.cli.info import info
from rs_pgd.cli.predict import predict
from rs_pgd.cli.qgis import qgis
from rs_pgd.cli.suggest import suggest
from rs_pgd.cli.vectorize import vectorize


@click.group(cls=ErrorHandlingGroup, name="pgd", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rs-pgd")
@click.option("--progress", "progress_mode", type=click.Choice(["bar", "json", "none"]), default=None,
              help="How commands show progress: a terminal bar, one JSON line per update on stderr (for programs "
                   "such as the QGIS provider), or nothing. Default: $RS_PGD_PROGRESS, else bar.")
@click.option("-v", "--verbose", count=True, help="-v: debug lines of rs-pgd and the libraries' log messages "
              "(rasterio, GDAL); -vv: also tracebacks instead of one-line errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars (--progress none).")
def cli(progress_mode, verbose, quiet):
    """Train and run segmentation on huge georeferenced rasters, window by window (Patch Gradient Descent)."""
    configure_logging(verbose, quiet)
    if quiet and progress_mode is None:
        progress_mode = "none"
    if progress_mode is not None:
        from rs_pgd.progress import set_mode

        set_mode(progress_mode)
    if verbose:
        import logging
        import os

        logging.basicConfig(level=logging.INFO if verbose == 1 else logging.DEBUG,
                            format="%(levelname)s %(name)s: %(message)s")
        if verbose > 1:
            os.environ["RS_PGD_DEBUG"] = "1"


for _command in (info, fit, predict, suggest, evaluate, vectorize, export, demo, qgis):
    cli.add_command(_command)


if __name__ == "__main__":
    cli()
