"""An MQTT broker for machines without mosquitto: amqtt in this process.

`python -m flame.embedded.amqtt_broker --port P` serves MQTT 3.1.1 on
127.0.0.1:P until SIGTERM. It is the embedded control plane's fallback; amqtt is
about three times slower than mosquitto and speaks no MQTT 5, which the data
plane handles by falling back to 3.1.1.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from amqtt.broker import Broker


async def serve(port: int) -> None:
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"amqtt serving on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
