"""``python -m l1quant`` runs the ``l1quant`` command."""

from l1quant.cli import main

main()
