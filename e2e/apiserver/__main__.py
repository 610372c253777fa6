"""`python -m e2e.apiserver --listen HOST:PORT --kubeconfig PATH [--token TOKEN]`: serve until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from .server import ApiServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m e2e.apiserver", description=__doc__)
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on (port 0 picks a free one)")
    p.add_argument("--kubeconfig", required=True, help="where to write a kubeconfig pointing at this server")
    p.add_argument("--token", default=None, help="bearer token clients must send (random when absent)")
    p.add_argument("--advertise-address", default=None,
                   help="address written into the kubeconfig and the certificate (default: the listen host, "
                        "or 127.0.0.1 for a wildcard listener); use it when clients live in other network "
                        "namespaces")
    p.add_argument("--tls-san", action="append", default=[], help="extra certificate subject alt name (repeatable)")
    p.add_argument("--history-window", type=int, default=10_000,
                   help="watch events kept per resource; older resourceVersions get 410 Gone")
    p.add_argument("--bookmark-interval", type=float, default=60.0, help="seconds between BOOKMARK events")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request (debug level)")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    host, _, port = args.listen.rpartition(":")
    server = ApiServer(host.strip("[]") or "127.0.0.1", int(port or 0), args.token, args.history_window,
                       args.bookmark_interval, extra_sans=args.tls_san, advertise=args.advertise_address)
    await server.start()
    server.write_kubeconfig(args.kubeconfig)
    logging.getLogger("e2e.apiserver").info("kubeconfig written path=%s", args.kubeconfig)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
