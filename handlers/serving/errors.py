"""Errors that answer ONE request of a batch with a 4xx, leaving the others untouched."""

from __future__ import annotations

from http import HTTPStatus


class RequestError(Exception):
    """A problem with one request: HTTP status + a message a user understands."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason  # a label for metrics (metrics.REASONS) where the status alone can't tell

    @property
    def phrase(self) -> str:
        return HTTPStatus(self.status).phrase

    def body(self) -> dict[str, str]:
        return {"error": self.message}


def bad_request(message: str) -> RequestError:
    return RequestError(400, message)
