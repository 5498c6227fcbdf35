"""SIGINT / SIGTERM in training: finish the step, write a state, exit 130 / 143 without a
traceback.

The handler only records the signal; the loop looks at it at each step boundary (`Stop.signum`), so
the state written is a complete one and the rerun resumes bitwise. A second signal stops at once
(the last periodic state stays). SIGTERM is only taken over when nobody else handles it (under
submitit, its own handler stays in charge of preemption and requeue)."""

import contextlib
import signal
import threading

from bcmcore.config import UserError


class Interrupted(UserError):
    """Stopped by a signal; `bcm` exits 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum


class Stop:
    def __init__(self):
        self.signum = None

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise Interrupted(
                f"{signal.Signals(signum).name} again: stopped at once", self.signum
            ) from None
        self.signum = signum

    def interrupted(self, step, state):
        name = signal.Signals(self.signum).name
        where = f"newest state {state.name}" if state else "no state written yet"
        return Interrupted(
            f"{name} at step {step}: {where}; rerun the same command to resume", self.signum
        )


@contextlib.contextmanager
def on_signals():
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        current = signal.getsignal(sig)
        if current in (signal.default_int_handler, signal.SIG_DFL):
            old[sig] = signal.signal(sig, stop._handle)
    try:
        yield stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
