"""`python -m fedrec ...`: the same CLI as the `fedrec` console script (DVC stages call it through bin/fedrec)."""

from fedrec.cli import main

if __name__ == "__main__":
    main()
