"""`python -m engine.cli`: the same application as the `modelroute` script."""

from engine.cli import main

main()
