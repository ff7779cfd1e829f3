"""`python -m bridge`: the same as the `tfs-bridge` console script."""

from bridge.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
