"""Run the deconvviz command line from a checkout: ``python cli.py --help``."""

from deconvviz.cli import main

if __name__ == "__main__":
    main()
