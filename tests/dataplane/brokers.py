"""Real MQTT brokers for the data-plane tests: mosquitto in its own process, amqtt
in a thread of this one. Both bind 127.0.0.1 on a free port."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from tests.support.processes import free_port, wait_for_port

__all__ = ["AmqttBroker", "Mosquitto", "password_entry"]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Mosquitto:
    """A mosquitto process that can be killed and restarted on the same port."""

    def __init__(self, folder: Path, *, extra_conf: list[str] | None = None) -> None:
        self.port = free_port()
        self.folder = folder
        self.conf = folder / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            # Without it, small packets (acks, presences) wait for a delayed ACK: 40 ms.
            "set_tcp_nodelay true",
            *(extra_conf or []),
        ]
        if not any(line.startswith("allow_anonymous") for line in lines):
            lines.append("allow_anonymous true")
        if os.geteuid() == 0:
            lines.append("user root")
        self.conf.write_text("\n".join(lines) + "\n")
        self._process: subprocess.Popen[bytes] | None = None
        self._log = folder / "mosquitto.log"

    def start(self) -> None:
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for_port(self.port, timeout=10, process=self._process)

    def kill(self) -> None:
        """SIGKILL: no will is published, no goodbye is sent."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing moves."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def log(self) -> str:
        return self._log.read_text(errors="replace")

    def _signal(self, sig: int) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class AmqttBroker:
    """amqtt (MQTT 3.1.1 only) running in its own thread and event loop."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._broker: Any = None

    def start(self) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        self._thread.start()

        async def start() -> None:
            self._broker = Broker(config)
            await self._broker.start()

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        wait_for_port(self.port, timeout=10)

    def stop(self) -> None:
        if self._broker is not None:
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def password_entry(username: str, password: str) -> str:
    """A mosquitto password_file line (PBKDF2-SHA512, the `$7$` format of mosquitto 2)."""
    salt = os.urandom(12)
    iterations = 101
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    encoded = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"{username}:$7${iterations}${encoded[0]}${encoded[1]}"
