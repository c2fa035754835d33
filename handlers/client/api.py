"""HTTP calls to the explanation API: one image in, the server's JSON answer out.

Each worker thread keeps its own ``requests.Session`` (sessions are not thread-safe),
so concurrent requests reuse connections and TorchServe can batch them. Streams of raw
frames (``explain_raw``, the video command) go through a kept-alive ``http.client``
connection per thread instead: a third of requests' CPU per request, which a client
sending hundreds of frames a second from the server's own cores notices.
"""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    return _message_of(answer.content, answer.reason)


def _message_of(content: bytes, reason: str) -> str:
    """The message of an error answer's body (``_error_message``), the status's reason when it has none."""
    try:
        body = json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace").strip()[:300] or reason
    if not isinstance(body, dict):
        return str(body)[:300]
    if body.get("type") == "InvalidKeyException":
        return f"{body.get('message', 'token authorization failed')} ({TOKEN_HINT})"
    return str(body.get("error") or body.get("message") or body)


def _prediction(status: int, reason: str, content: bytes) -> dict[str, Any]:
    """The JSON answer to an explanation request; ApiError for an error status or anything but an answer."""
    if status >= 400:
        raise ApiError(_message_of(content, reason), status)
    try:
        body = json.loads(content)
    except ValueError:
        raise ApiError(f"answer is not JSON: {content.decode('utf-8', 'replace')[:200]!r}", status) from None
    if not isinstance(body, dict) or "predictions" not in body:
        raise ApiError(f"answer has no 'predictions': {str(body)[:200]}", status)
    return body


class ExplainClient:
    """Posts images to ``{url}/predictions/{model}`` as multipart (field ``data`` + option fields)."""

    def __init__(self, url: str, model: str, token: str | None = None, timeout: float = 120.0) -> None:
        self.endpoint = f"{url.rstrip('/')}/predictions/{model}"
        self._target = urlsplit(self.endpoint)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._connections: list[http.client.HTTPConnection] = []
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
        return _prediction(*self._send_raw(image, {**self.headers, **headers}))

    def _connection(self, fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's kept-alive connection (a new one when ``fresh`` or none yet), and whether it is reused."""
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is not None and not fresh:
            return connection, True
        if connection is not None:
            connection.close()
        kind = http.client.HTTPSConnection if self._target.scheme == "https" else http.client.HTTPConnection
        connection = self._local.connection = kind(self._target.netloc, timeout=self.timeout)
        with self._lock:
            self._connections.append(connection)
        return connection, False

    def _send_raw(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        """POST ``body`` on this thread's connection: (status, reason, content).

        A kept-alive connection the server has closed meanwhile is replaced and the request sent once more
        (an explanation changes nothing on the server); raises ApiError or ServerUnreachable as ``_post``.
        """
        path = self._target.path + (f"?{self._target.query}" if self._target.query else "")
        fresh = False
        while True:
            connection, reused = self._connection(fresh)
            try:
                connection.request("POST", path, body, headers)
                answer = connection.getresponse()
                return answer.status, answer.reason, answer.read()
            except TimeoutError:
                connection.close()
                raise ApiError(f"no answer from {self.endpoint} within {self.timeout:g} s") from None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                connection.close()
                if not reused:
                    raise ApiError(f"{self.endpoint} closed the connection without an answer") from None
                fresh = True
            except OSError:
                connection.close()
                raise ServerUnreachable(f"cannot connect to {self.endpoint}: is TorchServe running there?") from None
            except http.client.HTTPException as error:
                connection.close()
                raise ApiError(f"request failed: {error}") from None

    def _post(self, **request: Any) -> dict[str, Any]:
        try:
            answer = self._session().post(self.endpoint, timeout=self.timeout, **request)
        except requests.Timeout:
            raise ApiError(f"no answer from {self.endpoint} within {self.timeout:g} s") from None
        except requests.ConnectionError:
            raise ServerUnreachable(f"cannot connect to {self.endpoint}: is TorchServe running there?") from None
        except requests.RequestException as error:
            raise ApiError(f"request failed: {error}") from None
        return _prediction(answer.status_code, answer.reason, answer.content)

    def close(self) -> None:
        """Close every thread's session and connection."""
        with self._lock:
            for session in self._sessions:
                session.close()
            for connection in self._connections:
                connection.close()
            self._sessions.clear()
            self._connections.clear()


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
