"""``--config FILE.yaml`` and ``--print-config`` for commands with many options (fit, predict).

Every option and argument of the command may come from the YAML file (keys are the option names, with ``-`` or
``_``: ``max-steps: 100``); the command line wins over the file. ``--print-config`` prints the resolved settings
as YAML and stops, so ``rs-pgd fit ... --print-config > run.yaml`` followed by ``rs-pgd fit --config run.yaml``
repeats a run.
"""

import functools
from pathlib import Path

import click


def _load(ctx, param, value):
    if value is None:
        return None
    import yaml

    try:
        data = yaml.safe_load(Path(value).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise click.BadParameter(f"{value} does not exist; give a YAML file of option: value lines") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"{value} is not readable YAML ({exc.__class__.__name__}); "
                                 "give option: value lines") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise click.BadParameter(f"{value} must hold a mapping of option: value (such as 'epochs: 10')")
    names = {p.name for p in ctx.command.params if p.name not in ("config", "print_config")}
    settings = {str(key).replace("-", "_"): item for key, item in data.items()}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise click.BadParameter(f"{value}: unknown setting(s) {', '.join(unknown)}; valid ones are "
                                 f"{', '.join(sorted(names))}")
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return value


def _printable(value):
    if isinstance(value, tuple):
        return [_printable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def config_options(command):
    """Decorator (placed right under ``@click.command``) adding ``--config`` and ``--print-config``."""

    @functools.wraps(command)
    def wrapper(*args, print_config=False, **kwargs):
        if print_config:
            import yaml

            order = [p.name for p in click.get_current_context().command.params]
            resolved = {name: _printable(kwargs[name]) for name in order if name in kwargs}
            click.echo(yaml.safe_dump(resolved, sort_keys=False).rstrip())
            return None
        return command(*args, **kwargs)

    wrapper = click.option("--print-config", is_flag=True,
                           help="Print the resolved settings (file + command line) as YAML and stop.")(wrapper)
    return click.option("--config", type=click.Path(dir_okay=False), callback=_load, is_eager=True,
                        expose_value=False, metavar="FILE.yaml",
                        help="Read settings from this YAML file; the command line wins.")(wrapper)
