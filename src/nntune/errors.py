"""The base class of every error a user can fix (bad params, bad data, missing files).

Entry points catch it and print its message without a traceback; anything else is a bug
and keeps its traceback.
"""


class NntuneError(ValueError):
    pass
