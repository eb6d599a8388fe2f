"""Test double of qubes.ext: handlers are marked with the events they hook."""


class Extension:
    pass


def handler(*events, **kwargs):
    def decorator(func):
        func.ha_events = events
        return func

    return decorator
