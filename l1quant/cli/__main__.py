"""``python -m l1quant.cli`` runs the ``l1quant`` command."""

from . import main

main()
