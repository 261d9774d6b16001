"""Shared by commands and imports: validation errors as text a terminal user can act on."""

from django.core.exceptions import ValidationError


def format_errors(exc: ValidationError) -> str:
    """A ValidationError as lines of "field: message", the way the admin shows them."""
    if hasattr(exc, "message_dict"):
        return "\n".join(f"{field}: {message}" for field, messages in exc.message_dict.items() for message in messages)
    return "\n".join(exc.messages)
