"""(being written)"""


def add_arguments(parser) -> None:
    pass


def main(args) -> int:
    raise SystemExit("python -m autograder progress is not available yet")
