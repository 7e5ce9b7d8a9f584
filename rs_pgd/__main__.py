"""``python -m rs_pgd ...`` runs the ``rs-pgd`` command line (so ``torchrun -m rs_pgd fit ...`` works too)."""

from rs_pgd.cli.main import cli

if __name__ == "__main__":
    cli(prog_name="rs-pgd")
