"""`python -m msgfm.cli`: the same as the `msgfm` console script."""

from msgfm.cli import main

main()
