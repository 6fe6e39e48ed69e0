"""``python -m zoo.diversity``: the command of :mod:`zoo.diversity.command`."""

from zoo.diversity.command import main

if __name__ == "__main__":
    main()
