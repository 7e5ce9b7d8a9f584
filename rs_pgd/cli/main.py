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
from rs_pgd.cli.vectorize import vectorize


@click.group(cls=ErrorHandlingGroup, name="pgd", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rs-pgd")
@click.option("-v", "--verbose", count=True, help="More log lines (-v: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(verbose, quiet):
    """Train and run segmentation on huge georeferenced rasters, window by window (Patch Gradient Descent)."""
    configure_logging(verbose, quiet)


for _command in (info, fit, predict, evaluate, vectorize, export, demo):
    cli.add_command(_command)


if __name__ == "__main__":
    cli()
