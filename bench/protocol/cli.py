"""`bench-protocol` on the command line: --help, config errors (exit 2) before anything runs, SIGTERM passed on."""
from __future__ import annotations

import importlib
import signal
import sys

from bench import config as bconfig
from bench.errors import ConfigError
from bench.protocol.runner import Protocol
from bench.protocol.settings import parse_args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(importlib.import_module("bench.protocol").__doc__)  # the package docstring is the manual
        return 0
    bconfig.register_resolvers()
    try:
        settings, passthrough, given = parse_args(argv)
        protocol = Protocol(settings, passthrough, argv, given)
        protocol.plan()
    except ConfigError as err:
        print(f"bench-protocol: config error: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda signum, frame: protocol.bench.forward(signum))
    return protocol.run()
