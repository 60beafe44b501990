"""Types a command into a guest's shell through `virsh console`, as a user at a
terminal does, for tests/libvirt.rs: virsh needs a terminal, so it runs on a
pseudo-terminal made here. Prints what came back; exits 0 once `expect` was seen.

    console.py URI DOMAIN COMMAND EXPECT TIMEOUT
"""
import os
import pty
import select
import sys
import time

uri, dom, command, expect, limit = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
pid, fd = pty.fork()
if pid == 0:
    os.execvp("virsh", ["virsh", "-c", uri, "console", "--force", dom])
seen = b""
start = time.monotonic()
last_sent = 0.0
ok = False
while time.monotonic() - start < limit:
    # The shell may not be up yet: type the command again every few seconds.
    if b"Escape character" in seen and time.monotonic() - last_sent > 3:
        os.write(fd, command.encode() + b"\r")
        last_sent = time.monotonic()
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
        # The typed command is echoed in its own form, which differs from `expect`.
        if expect.encode() in seen:
            ok = True
            break
os.write(fd, b"\x1d")  # Ctrl-], virsh console's escape
time.sleep(0.5)
try:
    os.kill(pid, 9)
except ProcessLookupError:
    pass
os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(0 if ok else 1)
