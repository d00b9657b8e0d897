"""When to fetch a fresh token: ahead of the JWT's `exp`, so no connection is ever refused at expiry.

Pure. The margin is a fifth of the token's lifetime, at least 2 s and at most 5 minutes: an hour-long token
is renewed 5 minutes early, a 10 s test token 2 s early.
"""

from __future__ import annotations

MARGIN_FRACTION = 0.2
MARGIN_MIN_S = 2.0
MARGIN_MAX_S = 300.0


def renewal_margin_s(lifetime_s: float) -> float:
    return min(MARGIN_MAX_S, max(MARGIN_MIN_S, lifetime_s * MARGIN_FRACTION))


def renew_at(exp_s: float, obtained_s: float) -> float:
    """Epoch seconds at which to renew a token obtained at `obtained_s` that expires at `exp_s`."""
    lifetime = max(0.0, exp_s - obtained_s)
    return exp_s - renewal_margin_s(lifetime)


def remaining_s(exp_s: float | None, now_s: float) -> float | None:
    return None if exp_s is None else exp_s - now_s
