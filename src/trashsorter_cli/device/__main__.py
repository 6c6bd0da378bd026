"""``python -m trashsorter_cli.device [--host H] [--port 8087] [--state-dir DIR]``: the local device."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from trashsorter_cli.device.server import LocalDevice


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trashsorter_cli.device", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    parser.add_argument("--state-dir", default=".trashsorter/device", help="deployed models live here")
    args = parser.parse_args(argv)
    device = LocalDevice(args.host, args.port, args.state_dir).start()
    print(f"local device listening on {device.url} (model: {device.status()['model_id']})", flush=True)
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stop.wait()
    device.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
