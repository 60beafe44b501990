"""Drives a QMP server with Python's qemu.qmp client (the PyPI package), for
tests/qmp.rs: reads commands on stdin, one per line, answers each with one JSON line.

    execute NAME [JSON-ARGUMENTS]  ->  {"return": ...} or {"error": "CLASS", "desc": ...}
    event NAME                     ->  {"event": NAME, "data": ...}, the next event of that
                                       name (earlier events of other names are skipped)
"""
import asyncio
import json
import sys

from qemu.qmp import ExecuteError, QMPClient


async def main(path):
    q = QMPClient("quern-test")
    await q.connect(path)
    print(json.dumps({"connected": True}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line:
            break
        cmd, _, rest = line.partition(" ")
        if cmd == "execute":
            name, _, args = rest.partition(" ")
            try:
                out = {"return": await q.execute(name, json.loads(args) if args else None)}
            except ExecuteError as e:
                out = {"error": e.error_class, "desc": str(e)}
        elif cmd == "event":
            while True:
                ev = await asyncio.wait_for(q.events.get(), 120)
                if ev["event"] == rest:
                    out = {"event": ev["event"], "data": ev.get("data"), "timestamp": ev.get("timestamp")}
                    break
        else:
            out = {"bad": line}
        print(json.dumps(out), flush=True)
    await q.disconnect()


asyncio.run(main(sys.argv[1]))
