"""HTTP calls to the explanation API: one image in, the server's JSON answer out.

Each worker thread keeps its own ``requests.Session`` (sessions are not thread-safe),
so concurrent requests reuse connections and TorchServe can batch them.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import requests

TOKEN_HINT = "the server has token authorization on: give --token KEY or --key-file PATH/key_file.json"


class ApiError(Exception):
    """A request that got no usable answer: an HTTP error status, or no connection at all."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    def __str__(self) -> str:
        message = super().__str__()
        return f"HTTP {self.status}: {message}" if self.status else message


class ServerUnreachable(ApiError):
    """No connection to the server at all: every other image would fail the same way, so none is sent."""


def read_key_file(path: Path, kind: str = "inference") -> str:
    """The ``kind`` key (inference, management) of TorchServe's ``key_file.json`` (``{"inference": {"key": ...}}``)."""
    try:
        keys = json.loads(path.read_text())
        return str(keys[kind]["key"])
    except OSError as error:
        raise ValueError(f"cannot read key file {path}: {error.strerror or error}") from None
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not TorchServe's key_file.json (no {kind!r} key)") from None


def _error_message(answer: requests.Response) -> str:
    """The message of an error answer: ours is ``{"error"}``, TorchServe's own ``{"message", "type"}``."""
    try:
        body = answer.json()
    except ValueError:
        return answer.text.strip()[:300] or answer.reason
    if not isinstance(body, dict):
        return str(body)[:300]
    if body.get("type") == "InvalidKeyException":
        return f"{body.get('message', 'token authorization failed')} ({TOKEN_HINT})"
    return str(body.get("error") or body.get("message") or body)


class ExplainClient:
    """Posts images to ``{url}/predictions/{model}`` as multipart (field ``data`` + option fields)."""

    def __init__(self, url: str, model: str, token: str | None = None, timeout: float = 120.0) -> None:
        self.endpoint = f"{url.rstrip('/')}/predictions/{model}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(session)
        return session

    def explain(self, image: bytes, filename: str, fields: dict[str, str]) -> dict[str, Any]:
        """The server's answer for one image sent as multipart; raises ApiError on any failure."""
        return self._post(files={"data": (filename, image)}, data=fields, headers=self.headers)

    def explain_raw(self, image: bytes, fields: dict[str, str]) -> dict[str, Any]:
        """The same, the image as the raw body and the options as ``X-Explain-*`` headers: less work per
        request on both sides (no multipart to build or parse), for streams of frames."""
        headers = {f"X-Explain-{name.replace('_', '-')}": value for name, value in fields.items()}
        headers["Content-Type"] = "application/octet-stream"
        return self._post(data=image, headers={**self.headers, **headers})

    def _post(self, **request: Any) -> dict[str, Any]:
        try:
            answer = self._session().post(self.endpoint, timeout=self.timeout, **request)
        except requests.Timeout:
            raise ApiError(f"no answer from {self.endpoint} within {self.timeout:g} s") from None
        except requests.ConnectionError:
            raise ServerUnreachable(f"cannot connect to {self.endpoint}: is TorchServe running there?") from None
        except requests.RequestException as error:
            raise ApiError(f"request failed: {error}") from None
        if answer.status_code >= 400:
            raise ApiError(_error_message(answer), answer.status_code)
        try:
            body = answer.json()
        except ValueError:
            raise ApiError(f"answer is not JSON: {answer.text[:200]!r}", answer.status_code) from None
        if not isinstance(body, dict) or "predictions" not in body:
            raise ApiError(f"answer has no 'predictions': {str(body)[:200]}", answer.status_code)
        return body

    def close(self) -> None:
        """Close every thread's session."""
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()


def fetch_description(
    management_url: str, model: str, token: str | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """The model's own description: ``customizedMetadata`` of ``GET {management}/models/{model}?customized=true``.

    TorchServe 0.12 sends the handler's JSON text as an object (checked on a real server); a
    string, as the handler hands it over, is parsed too. Raises ServerUnreachable without a
    connection, ApiError for an error status or an answer without a description.
    """
    url = f"{management_url.rstrip('/')}/models/{model}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = requests.get(url, params={"customized": "true"}, headers=headers, timeout=timeout)
    except requests.ConnectionError:
        raise ServerUnreachable(f"cannot connect to the management API at {url}") from None
    except requests.RequestException as error:
        raise ApiError(f"description request failed: {error}") from None
    if answer.status_code >= 400:
        raise ApiError(_error_message(answer), answer.status_code)
    try:
        (status,) = answer.json()
        described = status["customizedMetadata"]
        return json.loads(described) if isinstance(described, str) else dict(described)
    except (ValueError, KeyError, TypeError):
        raise ApiError(f"{url} has no model description (customizedMetadata): is it served by this handler?") from None
