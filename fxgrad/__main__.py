"""`python -m fxgrad`: the same command line as the `fxgrad` script."""

from fxgrad.cli import main

if __name__ == "__main__":
    main(prog_name="fxgrad")
