"""``python -m fieldlink``: the ``fieldlink`` command, also where no console script is installed
(the supervisor starts every agent slot this way, with the slot's own interpreter)."""

from fieldlink.cli.main import main

if __name__ == "__main__":
    main()
