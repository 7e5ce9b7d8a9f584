"""The ``rs-pgd`` command line (also ``rio pgd``). Importing it does not import torch."""
