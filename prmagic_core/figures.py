"""Placeholder replaced by the notebooks work: ``prmagic figures``."""


def add_arguments(parser):
    pass


def run(args) -> int:
    raise NotImplementedError("prmagic figures is not written yet")
