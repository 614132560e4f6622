"""``python -m deconvviz``: the command line."""

from deconvviz.cli import main

main()
