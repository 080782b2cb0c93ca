"""The inprocess backend: envs run in the host process (tests and trusted libraries).

It answers the same requests as a remote worker, through the same `EnvGroup`, so semantics do
not change with the backend; only isolation and parallelism are lost.
"""

from __future__ import annotations

from ldm_envs.backends.base import Backend
from ldm_envs.manifest import EnvLibrarySpec
from ldm_envs.protocol import InProcessWorkerClient, WorkerClient


class InProcessBackend(Backend):
    """Nothing to build: the library must already be importable in the host."""

    name = "inprocess"

    def is_ready(self, spec: EnvLibrarySpec) -> bool:
        return True

    def prepare(self, spec: EnvLibrarySpec, *, rebuild: bool = False) -> str:
        return "host process"

    def spawn(self, spec: EnvLibrarySpec) -> WorkerClient:
        return InProcessWorkerClient(spec.name)

    def describe(self, spec: EnvLibrarySpec) -> str:
        return "host process"
