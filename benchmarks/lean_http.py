"""A keep-alive HTTP/1.1 JSON client on the standard library, for timing servers.

httpx spends about a millisecond of Python per POST of a typing-trace request (building the
request, its event hooks, parsing the reply) on this machine's cores, against 0.3 ms for
``http.client``. A benchmark that times a server through it charges that millisecond to the
server, and not to raw llama-cpp-python, which has no client at all.
"""

import http.client
import json
from urllib.parse import urlsplit


class JsonClient:
    """POSTs JSON bodies over one connection, reconnecting once if the server closed it."""

    def __init__(self, url: str, headers: dict | None = None, timeout: float = 300) -> None:
        parts = urlsplit(url)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._timeout = timeout
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._connection: http.client.HTTPConnection | None = None

    def post(self, path: str, body: dict) -> dict:
        """The reply's JSON body; RuntimeError for a reply that is not a success."""
        data = json.dumps(body).encode()
        for attempt in range(2):
            connection = self._connect()
            try:
                connection.request("POST", path, body=data, headers=self._headers)
                reply = connection.getresponse()
                content = reply.read()
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self.close()
                if attempt:
                    raise
                continue
            if not 200 <= reply.status < 300:
                raise RuntimeError(f"{path} answered {reply.status}: {content[:500]!r}")
            return json.loads(content or b"null")
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            self._connection = http.client.HTTPConnection(*self._address, timeout=self._timeout)
        return self._connection
