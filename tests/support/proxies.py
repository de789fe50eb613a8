"""A TCP proxy in front of the machine's Redis that loses one answer: a broker that stopped mid-publish.

A broker that stops (or a network that breaks) between storing a message and answering
leaves the publisher not knowing whether the message is there. Redis does this at a
``SIGTERM``: commands read in its last loop are run and written to its append-only file,
their answers are never sent. This proxy makes that moment happen on cue, for one
command, without stopping the machine's Redis: once armed, it forwards the first command
holding ``needle`` (and ``LPUSH``, kombu's publish), lets Redis run it, drops its answer,
cuts that connection, and turns away every new connection for ``down`` seconds.
"""

from __future__ import annotations

import socket
import threading
import time


class AnswerLosingProxy:
    def __init__(self, needle: bytes, down: float, target: tuple[str, int] = ("127.0.0.1", 6379)) -> None:
        self.needle = needle
        self.down = down
        self.target = target
        self.armed = threading.Event()
        self.fired = threading.Event()
        self._down_until = 0.0
        self.up_again = 0.0  # wall-clock time the proxy takes connections again after firing
        self._closed = False
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, name="answer-losing-proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if time.monotonic() < self._down_until:
                client.close()  # the broker is "down": the publisher's retries fail
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            self._open += [client, server]
            muted = threading.Event()  # set: the server's answers on this pair are dropped
            threading.Thread(target=self._up, args=(client, server, muted), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, muted), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, muted: threading.Event) -> None:
        try:
            while True:
                data = client.recv(1 << 16)
                if not data:
                    break
                if (self.armed.is_set() and not self.fired.is_set() and self.needle in data
                        and b"LPUSH" in data.upper()):  # fmt: skip
                    muted.set()
                    server.sendall(data)
                    time.sleep(0.3)  # Redis runs it (and keeps it); its answer goes nowhere
                    self._down_until = time.monotonic() + self.down
                    self.up_again = time.time() + self.down
                    self.fired.set()
                    break
                server.sendall(data)
        except OSError:
            pass
        finally:
            _cut(client, server)

    @staticmethod
    def _down(server: socket.socket, client: socket.socket, muted: threading.Event) -> None:
        try:
            while True:
                data = server.recv(1 << 16)
                if not data:
                    break
                if not muted.is_set():
                    client.sendall(data)
        except OSError:
            pass
        finally:
            _cut(client, server)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for sock in self._open:
            _cut(sock)


def _cut(*socks: socket.socket) -> None:
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
