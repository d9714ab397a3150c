"""`python -m clipdistill`: the same command as the `clipdistill` script."""

from clipdistill.cli import main

main()
