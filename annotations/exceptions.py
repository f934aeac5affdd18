"""Errors raised by services and selectors. The API turns each into its status code."""


class SoraError(Exception):
    status_code = 400
    code = "error"

    def __init__(self, message: str, **extra):
        super().__init__(message)
        self.message = message
        self.extra = extra


class InvalidInput(SoraError):
    """A rule about the input that a serializer cannot see (e.g. an unknown domain)."""

    status_code = 400
    code = "invalid"

    def __init__(self, field: str, message: str):
        super().__init__(f"Invalid input: {field}.", errors={field: [message]})


class NotAllowed(SoraError):
    status_code = 403
    code = "permission_denied"


class NotFound(SoraError):
    status_code = 404
    code = "not_found"


class Conflict(SoraError):
    status_code = 409
    code = "conflict"


class StaleVersion(Conflict):
    code = "stale_version"


class LeaseLost(Conflict):
    code = "lease_lost"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class IdempotencyKeyReused(SoraError):
    """The same Idempotency-Key came back with a different body."""

    status_code = 422
    code = "idempotency_key_reused"
