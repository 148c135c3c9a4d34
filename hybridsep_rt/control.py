"""Live control of a running stream: one-line text commands from stdin or from a TCP socket on 127.0.0.1.

Protocol
--------
A command is one UTF-8 line; every command gets exactly one reply line: ``ok ...``, a JSON object (``stats``)
or ``error: ...``. Commands::

    q TEXT           separate TEXT from the next window on ("query TEXT" too); keeps the mode
    mode MODE        "extract" (the queried sound) or "remove" (the mixture without it)
    wet X            wet/dry mix in [0, 1]: 1 = separated output only, 0 = the dry input
    bypass on|off    play the dry input (same latency, so nothing jumps)
    stats            the stream's counters and settings as one JSON object
    help             the list of commands
    quit             stop the stream (files are closed and the process exits)

The socket (``hybridsep stream --control-port PORT``, 0 = any free port) is bound to 127.0.0.1 only, so only
programs on this machine can reach it; there is no authentication beyond that. Try it with::

    printf 'q a dog barking\\nstats\\n' | nc 127.0.0.1 PORT
"""

from __future__ import annotations

import json
import math
import socketserver
import threading
from collections.abc import Callable
from typing import TextIO

from hybridsep_rt.engine import Query, StreamingEngine
from hybridsep_rt.overlap import MODES

__all__ = ["HELP", "LOCALHOST", "ControlServer", "Controller", "read_commands"]

LOCALHOST = "127.0.0.1"
MAX_LINE_BYTES = 4096  # longer lines are refused (a query is a sentence)

HELP = ("commands: q TEXT | mode extract|remove | wet X (0..1) | bypass on|off | stats | help | quit")

_SWITCH_WORDS = {"on": True, "off": False, "1": True, "0": False, "true": True, "false": False}


class Controller:
    """Applies commands to a :class:`StreamingEngine` (thread-safe: the engine's setters are single stores).

    Args:
        engine: the running engine.
        describe: returns the stream's counters and settings for ``stats`` (a JSON-serialisable dict).
        request_stop: called on ``quit``.
    """

    def __init__(self, engine: StreamingEngine, describe: Callable[[], dict], request_stop: Callable[[], None]):
        self.engine = engine
        self.describe = describe
        self.request_stop = request_stop
        self.bypass = False
        self.wet = engine.config.wet
        self._lock = threading.Lock()  # stdin and socket clients may send commands at the same time

    @property
    def mode(self) -> str:
        query = self.engine.query
        return query.mode if query is not None else "extract"

    def execute(self, line: str) -> str:
        """Run one command line; returns the reply line (no newline)."""
        command, _, argument = line.strip().partition(" ")
        command, argument = command.lower(), argument.strip()
        if not command:
            return "error: empty command; " + HELP
        handler = {
            "q": self._query, "query": self._query, "mode": self._mode, "wet": self._wet,
            "bypass": self._bypass, "stats": self._stats, "help": self._help, "quit": self._quit,
        }.get(command)
        if handler is None:
            return f"error: unknown command {command!r}; " + HELP
        try:
            with self._lock:
                return handler(argument)
        except ValueError as e:
            return f"error: {e}"

    def _query(self, text: str) -> str:
        if not text:
            raise ValueError("q needs a text, e.g. q a dog barking")
        self.engine.set_query(Query(text=text, mode=self.mode))
        return f"ok query {text!r}"

    def _mode(self, mode: str) -> str:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if self.engine.query is None:
            raise ValueError("there is no query yet: set one with q TEXT")
        self.engine.set_mode(mode)
        return f"ok mode {mode}"

    def _wet(self, value: str) -> str:
        try:
            wet = float(value)
        except ValueError:
            raise ValueError(f"wet needs a number in [0, 1], got {value!r}") from None
        if not math.isfinite(wet):
            raise ValueError(f"wet needs a number in [0, 1], got {value!r}")
        self.engine.set_wet(wet)  # raises ValueError outside [0, 1]
        self.wet = wet
        return f"ok wet {wet:g}"

    def _bypass(self, value: str) -> str:
        if value.lower() not in _SWITCH_WORDS:
            raise ValueError("bypass needs on or off")
        self.bypass = _SWITCH_WORDS[value.lower()]
        self.engine.set_bypass(self.bypass)
        return f"ok bypass {'on' if self.bypass else 'off'}"

    def _stats(self, _: str) -> str:
        return json.dumps(self.describe(), sort_keys=True)

    def _help(self, _: str) -> str:
        return "ok " + HELP

    def _quit(self, _: str) -> str:
        self.request_stop()
        return "ok quit"


class _Handler(socketserver.StreamRequestHandler):
    """One client connection: a reply line for every command line, until the client closes."""

    def handle(self) -> None:
        controller: Controller = self.server.controller  # type: ignore[attr-defined]
        while True:
            raw = self.rfile.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            if len(raw) > MAX_LINE_BYTES:
                self._reply(f"error: command longer than {MAX_LINE_BYTES} bytes")
                return
            reply = controller.execute(raw.decode("utf-8", errors="replace"))
            self._reply(reply)
            if reply == "ok quit":
                return

    def _reply(self, text: str) -> None:
        self.wfile.write(text.encode("utf-8") + b"\n")
        self.wfile.flush()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class ControlServer:
    """The control socket: a TCP server on 127.0.0.1 that passes command lines to a :class:`Controller`.

    Args:
        controller: runs the commands.
        port: TCP port; 0 picks a free one (see :attr:`port`).
    """

    def __init__(self, controller: Controller, port: int = 0):
        if not 0 <= port <= 65535:
            raise ValueError(f"the control port must be in 0..65535, got {port}")
        self._server = _Server((LOCALHOST, port), _Handler)
        self._server.controller = controller
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="hybridsep-control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()


def read_commands(source: TextIO, controller: Controller, reply: Callable[[str], None]) -> threading.Thread:
    """Run the command lines of ``source`` (e.g. stdin) in a daemon thread; ``reply`` gets each reply line.

    End of input only ends the reading (a stream started with stdin closed keeps running).
    """

    def loop() -> None:
        for line in source:
            if line.strip():
                reply(controller.execute(line))

    thread = threading.Thread(target=loop, name="hybridsep-stdin", daemon=True)
    thread.start()
    return thread
