"""An engine held by a Ray actor for tests that need it in a process of its own (importable by Ray workers)."""


class EngineHost:
    """Holds an engine; calls and attribute reads arrive by name."""

    def __init__(self, model_dir, **options):
        from rollout import build_engine

        self.engine = build_engine("vllm", model_dir, **options)

    def call(self, name, *args, **kwargs):
        return getattr(self.engine, name)(*args, **kwargs)

    def read(self, name):
        return getattr(self.engine, name)
