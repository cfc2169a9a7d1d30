from patchpilot.cli import entrypoint

entrypoint()
