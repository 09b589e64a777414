"""Actor output (vLLM, Ray workers) goes to runs/<name>/logs/, not the terminal, unless asked for."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import logging
    import sys
    import ray
    from pipeline.cluster import connect
    from pipeline.config import load_config

    cfg = load_config(None, [f"run.output_dir={sys.argv[1]}", "run.name=logs", f"logging.engine_logs={sys.argv[2]}",
                             "cluster.num_cpus=1"])
    logging.basicConfig(level=logging.INFO)
    connect(cfg)

    @ray.remote
    def chatter():
        print("chatter-from-an-actor", flush=True)
        return 1

    assert ray.get(chatter.remote()) == 1
""")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["file", "terminal"])
def test_actor_output_goes_to_the_run_folder_unless_shown(tmp_path, where):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), where], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    terminal = out.stdout + out.stderr
    saved = "".join(p.read_text() for p in (tmp_path / "logs" / "logs").glob("worker-*"))
    if where == "file":
        assert "chatter-from-an-actor" not in terminal
        assert "chatter-from-an-actor" in saved
        assert "logging.engine_logs=terminal" in terminal  # the one line that says where they went
    else:
        assert "chatter-from-an-actor" in terminal
        assert not (tmp_path / "logs" / "logs").exists()
