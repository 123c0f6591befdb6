"""``python -m l1quant.cli`` runs the ``l1quant`` command."""

from l1quant.cli import main

main()
