"""Stand-ins around the IPC receiver (rollout/weight_ipc.py) for tests: a vLLM worker as far as the extension
sees it, and a rollout actor holding one. In a module of their own so that Ray workers import them by name."""
import torch

from rollout.weight_ipc import IPCReceiverExtension


class _Model:
    """Stands in for vLLM's model: ``load_weights`` consumes ``(name, tensor)`` pairs, as vLLM's does."""

    def __init__(self):
        self.loaded = {}

    def load_weights(self, weights):
        for name, tensor in weights:
            self.loaded[name] = tensor.clone()
        return set(self.loaded)


class _Runner:
    def __init__(self):
        self.model = _Model()


class _Worker(IPCReceiverExtension):
    """A vLLM worker as far as the extension sees it: ``device`` and ``model_runner.model``."""

    device = torch.device("cpu")

    def __init__(self):
        self.model_runner = _Runner()


class FakeIPCEngine:
    """A rollout worker whose engine is the IPC receiver extension over a stand-in model."""

    def __init__(self):
        self.worker = _Worker()

    def ready(self):
        return 0.0

    def receive_ipc(self, bucket, last=False):
        self.worker.r1_receive_ipc(bucket)
        return 0.0

    def loaded(self):
        return self.worker.model_runner.model.loaded
