"""Lookup plugin: wait on the controller until patchpilot's engine releases the next batch.

The engine runs the whole patch playbook as one Ansible process (`serial` batches) and
decides between batches. At the start of each batch this lookup waits for a file named
after the batch (`key`) in `dir`, written by the engine once the batch is journalled, and
returns its content: "go", or "stop" to end the play. If the engine process (`pid`) is gone,
it returns "stop": no batch ever starts without an engine to record it.
"""

DOCUMENTATION = r"""
name: patchpilot_gate
short_description: Wait for patchpilot's engine to release a batch
description:
  - Waits until patchpilot's engine has written its decision for a batch (go or stop) in
    the gate folder, and returns it; gives up when the engine's process is gone.
author: patchpilot
options:
  dir:
    description: Directory the engine writes its decisions to.
    required: true
  key:
    description: The batch's name in that directory.
    required: true
  pid:
    description: The engine's process id.
    required: true
"""

import errno
import os
import time

from ansible.plugins.lookup import LookupBase

POLL_SECONDS = 0.02


def _alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        path = os.path.join(str(kwargs["dir"]), str(kwargs["key"]))
        pid = int(kwargs["pid"])
        while True:
            try:
                with open(path) as fh:
                    return [fh.read().strip()]
            except OSError:
                pass
            if not _alive(pid):
                return ["stop"]
            time.sleep(POLL_SECONDS)
