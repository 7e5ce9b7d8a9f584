"""``rs-pgd qgis install|uninstall``: put the QGIS Processing provider into a QGIS profile, or take it out."""

import click

_profile_opt = click.option(
    "--profile", type=click.Path(file_okay=False), default=None, metavar="DIR",
    help="QGIS profile folder, e.g. ~/.local/share/QGIS/QGIS3/profiles/default (the default).",
)


@click.group(short_help="Install the QGIS Processing provider (rs_pgd:predict, fit, vectorize, evaluate).")
def qgis():
    """Manage the QGIS Processing provider of this rs-pgd environment."""


@qgis.command(short_help="Install (or update) the provider in a QGIS profile.")
@_profile_opt
def install(profile):
    """Copy the plugin into a QGIS profile, enable it, and record this rs-pgd executable for it to run."""
    from rs_pgd.qgis_install import install as run_install

    result = run_install(profile)
    click.echo(f"installed {result.plugin_dir}\nenabled in {result.settings}\nruns: {' '.join(result.command)}\n"
               "restart QGIS; the algorithms are under 'rs-pgd' in the Processing toolbox")


@qgis.command(short_help="Remove the provider from a QGIS profile.")
@_profile_opt
def uninstall(profile):
    """Remove the plugin and its settings entry from a QGIS profile."""
    from rs_pgd.qgis_install import uninstall as run_uninstall

    result = run_uninstall(profile)
    click.echo(f"removed {result.plugin_dir}" if result.changed else f"not installed in {result.profile}")
