"""``ioband daemon``: run the daemon in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys

from ioband.errors import IobandError


def add_daemon(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "daemon",
        help="run the daemon (NBD exports of ioband devices) in the foreground",
        description="Start the daemon with its devices from a TOML configuration file; every "
        "device is an NBD export. SIGTERM or SIGINT drains it: what is held is released, what "
        "is in flight completes. The `ioband create/message/table/...` commands reach it through "
        "its control socket ([daemon] control_socket, default /run/ioband/control.sock); what "
        "they change is saved to [daemon] state_file (default /var/lib/ioband/state.json) and "
        "restored on start.",
    )
    p.add_argument("--config", metavar="FILE", required=True, help="TOML configuration file")
    p.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    p.set_defaults(func=cmd_daemon)


def cmd_daemon(args: argparse.Namespace) -> int:
    from ioband.control.config import load_config
    from ioband.control.daemon import run_daemon

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
    )
    try:
        config = load_config(args.config, service_defaults=True)
        run_daemon(config, args.config)
    except IobandError as err:
        print(f"ioband daemon: {err.describe()}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"ioband daemon: {err}", file=sys.stderr)
        return 1
    return 0
