"""Prefect's temporary API server must not outlive factrecall.

Prefect starts its ephemeral server as a child process (`python -m uvicorn ...`) and stops it at exit;
after a kill -9 of factrecall nothing stops it. Here the child is started through a small launcher that
runs uvicorn with a watchdog thread: when its parent process is gone (the child is re-parented), it exits
within half a second. The child runs in its own session, so that a signal sent to factrecall's process group
does not stop the server factrecall's flow still reports to. Applied once, when the flows import Prefect.
"""

from __future__ import annotations

import sys

__all__ = ["LAUNCHER", "install"]

#: Runs `python -m uvicorn <args>` in this process, exiting when the process that started it is gone.
LAUNCHER = (
    "import os, runpy, sys, threading, time\n"
    "parent = os.getppid()\n"
    "def watch():\n"
    "    while os.getppid() == parent:\n"
    "        time.sleep(0.5)\n"
    "    os._exit(0)\n"
    "threading.Thread(target=watch, daemon=True).start()\n"
    "sys.argv = ['uvicorn', *sys.argv[1:]]\n"
    "runpy.run_module('uvicorn', run_name='__main__', alter_sys=True)\n"
)


def install() -> None:
    """Start Prefect's ephemeral server through the launcher (idempotent)."""
    import subprocess

    from prefect.server.api import server

    cls = server.SubprocessASGIServer
    if getattr(cls, "_factrecall_watchdog", False):
        return
    original = cls._run_uvicorn_command

    def run_with_watchdog(self):
        real_popen = subprocess.Popen

        def popen(args, **kwargs):
            if list(args[:3]) == [sys.executable, "-m", "uvicorn"]:
                args = [sys.executable, "-c", LAUNCHER, *args[3:]]
                # its own session: a signal to factrecall's process group (Ctrl-C in a terminal, `timeout`, a
                # service manager) reaches factrecall only, whose flow then records how it ended on a server that
                # still answers and stops it at exit; in the group, the server died first and factrecall spent a
                # minute retrying it (measured: 78 s after SIGTERM, then "unexpected ConnectError")
                kwargs.setdefault("start_new_session", True)
            return real_popen(args, **kwargs)

        server.subprocess.Popen = popen
        try:
            return original(self)
        finally:
            server.subprocess.Popen = real_popen

    cls._run_uvicorn_command = run_with_watchdog
    cls._factrecall_watchdog = True
