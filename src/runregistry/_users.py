"""User names for messages about owners of files and processes."""

from __future__ import annotations


def user_name(uid: int) -> str:
    """Return the login name of *uid*, or the number itself when it has none."""
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def describe_user(uid: int) -> str:
    """Return *uid* for messages, such as ``nobody (uid 65534)`` or ``uid 1234``."""
    name = user_name(uid)
    return f"uid {uid}" if name == str(uid) else f"{name} (uid {uid})"
