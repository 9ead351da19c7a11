"""The supervisor acts on a stop signal wherever in its loop the signal lands.

The rule shown: for every point (each traced line, over several supervision periods) at which a
SIGINT can reach `Supervisor.run_until_stopped`, the call returns. A handler that takes a lock
(`threading.Event.set`) deadlocks when the signal lands while the loop holds that lock, and the
child process below never exits. The wait is for the child's exit, bounded by a timeout.
"""

from __future__ import annotations

import subprocess
import sys

PROBE = '''
import os, signal, sys
from dtq.runtime.process import Supervisor

def stop_at(k):
    count = 0
    def tracer(frame, event, arg):
        nonlocal count
        if event == "line" and signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            count += 1
            if count == k:
                sys.settrace(None)
                os.kill(os.getpid(), signal.SIGINT)
        return tracer
    sup = Supervisor([])
    sys.settrace(tracer)
    try:
        sup.run_until_stopped(period_s=0.001)
    finally:
        sys.settrace(None)
    signal.signal(signal.SIGINT, signal.default_int_handler)

for k in range(1, 120):
    stop_at(k)
    print("stopped at", k, flush=True)
'''


def test_a_signal_anywhere_in_the_supervision_loop_stops_it() -> None:
    proc = subprocess.Popen([sys.executable, "-c", PROBE], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        last = out.strip().splitlines()[-1:] or ["before the first"]
        raise AssertionError(f"the supervisor hung on a signal after: {last[0]}") from None
    assert proc.returncode == 0, out
    assert "stopped at 119" in out, out
