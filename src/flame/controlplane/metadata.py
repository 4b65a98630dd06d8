"""Metadata keys of the control plane.

Callers present one credential: `authorization: Bearer <token>` for users,
`x-flame-task-key` for task agents, `x-flame-compute-key` for deployers. The
apiserver resolves user tokens and tells the controller who is calling with the
`x-flame-user` and `x-flame-admin` keys, vouched for by `x-flame-internal-key`,
a secret shared by the two; it drops those keys from whatever callers send.
"""

from __future__ import annotations

__all__ = [
    "ADMIN",
    "AUTHORIZATION",
    "COMPUTE_KEY",
    "IDENTITY_KEYS",
    "INTERNAL_KEY",
    "TASK_KEY",
    "USER",
]

AUTHORIZATION = "authorization"
TASK_KEY = "x-flame-task-key"
COMPUTE_KEY = "x-flame-compute-key"
USER = "x-flame-user"
ADMIN = "x-flame-admin"
INTERNAL_KEY = "x-flame-internal-key"

# Keys only the apiserver may set on calls to the controller.
IDENTITY_KEYS = frozenset({USER, ADMIN, INTERNAL_KEY})
