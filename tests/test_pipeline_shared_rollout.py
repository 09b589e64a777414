"""`r1 run`'s shared rollout actor: stages of one model size get the same actor with their weights swapped
in, a model of other shapes gets a new actor, and outside a run every stage owns (and kills) its own.

The actors are real Ray actors holding the transformers engine on tiny models (fast); the vLLM side of
``load_model`` is tested against the real engine in test_weight_sync.py."""
import time

import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.cluster import release_rollout, shared_rollouts, start_rollout
from pipeline.config import load_config
from rollout import SamplingSpec

GREEDY = SamplingSpec(n=1, temperature=0.0, max_new_tokens=6, logprobs=True)
PROMPT = [[17, 42, 216, 33]]


def _variant(base_dir, out, *, seed=None, layers=None):
    """A copy of the tiny model with other weights (``seed``) or fewer layers (``layers``)."""
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    if seed is not None:
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
    if layers is not None:
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return str(out)


def _greedy(pool):
    out = pool.generate(PROMPT, GREEDY)[0].completions[0]
    return out.token_ids, [round(x, 4) for x in out.logprobs]


def _alive(pool) -> bool:
    """Whether the pool's engine actor still answers; a kill lands asynchronously, so a live answer is asked
    again."""
    handle = pool.handles[0]
    for _ in range(12):
        try:
            ray.get(handle.ready.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return False
        time.sleep(0.25)
    return True


def test_stages_share_one_actor_and_swap_weights(tiny_model_dir, tmp_path, ray_repo):
    cfg = load_config(None, ["rollout.engine=hf"])
    other = _variant(tiny_model_dir, tmp_path / "other", seed=1)
    shallow = _variant(tiny_model_dir, tmp_path / "shallow", layers=1)

    fresh = start_rollout(cfg, other)  # no run: a stage's own actor, killed when released
    expected = _greedy(fresh)
    release_rollout(fresh)
    assert not _alive(fresh)

    with shared_rollouts():
        first = start_rollout(cfg, tiny_model_dir)
        before = _greedy(first)
        release_rollout(first)
        second = start_rollout(cfg, other)
        assert second is first and _alive(first)  # the next stage got the same actor ...
        assert _greedy(second) == expected != before  # ... holding the new stage's weights
        student = start_rollout(cfg, shallow)
        assert student is not first and not _alive(first)  # other shapes: a new actor replaces it
        assert _alive(student)
    assert not _alive(student)  # the run's end frees it


def test_shared_rollout_can_be_switched_off(tiny_model_dir, ray_repo):
    cfg = load_config(None, ["rollout.engine=hf"])
    with shared_rollouts(enabled=False):
        handle = start_rollout(cfg, tiny_model_dir)
        release_rollout(handle)
        assert not _alive(handle)
