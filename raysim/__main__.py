"""``python -m raysim ...`` is the ``raysim`` command (for an environment whose scripts are not on PATH)."""

from raysim.cli import main

if __name__ == "__main__":
    main()
