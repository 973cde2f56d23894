"""The one check for numbers in configs: a number (never a bool, which Python counts as an int) within bounds."""

from detfuse.core.errors import UserError


def checked_number(value, what, *, integer=False, above=None, at_least=None):
    """`value` when it is a number (a whole one when `integer`) > `above` and >= `at_least`; else a UserError
    "`what` must be ..., got VALUE" (`what` names the file and the field)."""
    kinds = int if integer else (int, float)
    if (isinstance(value, bool) or not isinstance(value, kinds)
            or (above is not None and value <= above) or (at_least is not None and value < at_least)):
        bounds = ([] if above is None else [f"> {above:g}"]) + ([] if at_least is None else [f">= {at_least:g}"])
        raise UserError(f"{what} must be {'a whole number' if integer else 'a number'}"
                        f"{' ' + ' and '.join(bounds) if bounds else ''}, got {value!r}")
    return value
