"""``python -m l1quant`` runs the ``l1quant`` command."""

from .cli import main

main()
