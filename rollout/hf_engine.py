"""A plain transformers engine: the fallback where vLLM is not installed (slow, but the same interface)."""
from __future__ import annotations

from typing import Sequence

from .architecture import architecture_of, check_same_architecture, expert_count, read_weights
from .types import Completion, Generation, SamplingSpec


class HFEngine:
    """Batched ``model.generate`` with left padding; logprobs of the sampled tokens from processed scores."""

    OPTIONS = ("dtype", "seed", "batch_size", "routing_capture")

    def __init__(self, model_dir: str, *, dtype: str = "float32", seed: int = 0, batch_size: int = 16,
                 routing_capture: bool = False) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        torch_dtype = torch.float32 if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).eval()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.seed = seed
        self.batch_size = batch_size
        self.architecture = architecture_of(model_dir)
        self.routing_capture = bool(routing_capture)
        self._routers: list = []
        self.moe_layers: list[int] = []
        self.routing_bytes_per_token = 0
        if self.routing_capture:
            from .routing_capture import routing_dtype

            self._routers = find_hf_routers(self.model)
            if not self._routers:
                raise ValueError(f"rollout.routing_capture=true but {model_dir} has no MoE routers that return "
                                 "top-k expert indices: routing capture is for MoE models only")
            config = self.model.config
            experts = expert_count(config)
            self.moe_layers = [layer for layer, _ in self._routers]
            self.routing_top_k = int(getattr(config, "num_experts_per_tok"))
            self.routing_dtype = routing_dtype(int(experts))
            self.routing_bytes_per_token = len(self.moe_layers) * self.routing_top_k * self.routing_dtype.itemsize
            self.route([[self.pad_id] * 2])  # fail now, not after a generation, if the routers do not fit

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSpec, *, progress: bool = False
                 ) -> list[Generation]:
        """``sampling.n`` samples per prompt. With ``sampling.seed`` each prompt group is generated on its own,
        from torch's RNG seeded by (seed, prompt ids): a prompt's samples then depend on neither its batch mates
        nor the engine that serves it (M engines sample what one would), at the cost of batching across prompts
        (the same prompt twice in one call gets the same samples twice). Without a seed, prompts are batched
        ``batch_size`` at a time."""
        from tqdm.auto import tqdm

        results: list[Generation] = []
        if sampling.seed is not None:
            for prompt in tqdm(prompts, desc="generating (hf)", disable=not progress):
                self.torch.manual_seed(group_seed(sampling.seed, prompt))
                results.extend(self._generate_chunk([list(prompt)], sampling))
        else:
            starts = range(0, len(prompts), self.batch_size)
            for start in tqdm(starts, desc="generating (hf)", disable=not progress):
                chunk = [list(p) for p in prompts[start:start + self.batch_size]]
                results.extend(self._generate_chunk(chunk, sampling))
        if self.routing_capture:
            self._attach_routing(results)
        return results

    def _attach_routing(self, generations: list[Generation]) -> None:
        """R3 for the fallback engine: one teacher-forced forward over prompt + response, router hooks on.

        ``generate`` runs with a KV cache and left padding, which makes per-token routing awkward to read
        off; a separate forward is simple and routes the same tokens (the model is unchanged).
        """
        from .routing_rows import share_group_prompts

        samples = [(gen.prompt_ids, c) for gen in generations for c in gen.completions]
        for start in range(0, len(samples), self.batch_size):
            chunk = samples[start:start + self.batch_size]
            rows = self.route([list(p) + list(c.token_ids) for p, c in chunk])
            for (prompt, completion), r in zip(chunk, rows):
                completion.routed_experts = r[:len(prompt) + len(completion.token_ids) - 1]
        share_group_prompts(generations)  # a group's prompt rows once, not per sample

    def route(self, sequences: Sequence[Sequence[int]]) -> list:
        """Each sequence's top-k expert ids per token, ``[len(seq), moe_layers, k]`` (one batched forward).

        Right padding: a causal model's real tokens never attend to the padding after them.
        """
        torch = self.torch
        width = max(len(s) for s in sequences)
        input_ids = torch.tensor([list(s) + [self.pad_id] * (width - len(s)) for s in sequences])
        attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
        captured: dict[int, object] = {}

        def hook(slot, module, output):
            indices = output[-1] if isinstance(output, tuple) else None
            if indices is None or indices.is_floating_point():
                # e.g. DeepSeek-style routers return logits only and the MoE block takes the top-k
                raise ValueError(f"routing_capture: {type(module).__name__} returns no top-k indices")
            captured[slot] = indices.detach()

        hooks = [router.register_forward_hook(lambda m, a, out, slot=slot: hook(slot, m, out))
                 for slot, (_, router) in enumerate(self._routers)]
        try:
            with torch.no_grad():
                self.model(input_ids=input_ids, attention_mask=attention, use_cache=False)
        finally:
            for handle in hooks:
                handle.remove()
        # Routers see the hidden states flattened to [batch * seq, hidden]: indices are [batch * seq, k].
        ids = torch.stack([captured[slot].reshape(len(sequences), width, -1) for slot in range(len(self._routers))],
                          dim=2)
        ids = ids.numpy().astype(self.routing_dtype)
        return [ids[i, :len(s)] for i, s in enumerate(sequences)]

    def _generate_chunk(self, chunk: list[list[int]], sampling: SamplingSpec) -> list[Generation]:
        torch = self.torch
        width = max(len(p) for p in chunk)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in chunk])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        greedy = sampling.temperature == 0
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention, max_new_tokens=sampling.max_new_tokens,
                do_sample=not greedy, temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p, top_k=None, num_return_sequences=sampling.n,
                pad_token_id=self.pad_id, return_dict_in_generate=True, output_scores=sampling.logprobs,
            )
        new_tokens = out.sequences[:, width:]
        step_logprobs = None
        if sampling.logprobs:
            # scores are the processed (temperature / top-p) logits of each step: the sampled distribution.
            scores = torch.stack(out.scores, dim=1).float().log_softmax(-1)
            step_logprobs = scores.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        eos = set(self._eos_ids())
        generations = []
        for i, prompt in enumerate(chunk):
            gen = Generation(prompt_ids=prompt)
            for j in range(sampling.n):
                row = i * sampling.n + j
                ids = new_tokens[row].tolist()
                end = next((t + 1 for t, tok in enumerate(ids) if tok in eos), None)
                finish = "stop" if end is not None else "length"
                ids = ids[:end] if end is not None else ids
                lps = step_logprobs[row, :len(ids)].tolist() if step_logprobs is not None else None
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                gen.completions.append(Completion(text=text, token_ids=ids, logprobs=lps, finish_reason=finish))
            generations.append(gen)
        return generations

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else [eos]

    def update_weights(self, state) -> float:
        """Copy new weights (HF names -> arrays/tensors) into the model in place; returns seconds taken."""
        import time

        import numpy as np

        torch = self.torch
        started = time.perf_counter()
        own = self.model.state_dict()
        with torch.no_grad():
            for name, value in state.items():
                if name not in own:
                    continue  # e.g. a tied lm_head the model does not hold separately
                tensor = torch.from_numpy(np.asarray(value)) if isinstance(value, np.ndarray) else value
                own[name].copy_(tensor.to(own[name].dtype))
        return time.perf_counter() - started

    def join_weight_group(self, host: str, port: int, first_rank: int, world_size: int, backend: str = "gloo",
                          timeout_s: float = 600.0) -> list[int]:
        """Join the trainer's weight-sync group as rank ``first_rank`` (one process: one rank)."""
        from .weight_broadcast import WeightGroup

        self.weight_group = WeightGroup(host, port, first_rank, world_size, backend=backend, timeout_s=timeout_s)
        return [first_rank]

    def receive_weights(self, specs: list, dtype: str) -> float:
        """Load one broadcast of the trainer's weights (:meth:`join_weight_group` first); returns seconds."""
        import time

        started = time.perf_counter()
        received = self.weight_group.receive([(n, tuple(s)) for n, s in specs], getattr(self.torch, dtype))
        self.update_weights(dict(received))
        return time.perf_counter() - started

    def load_model(self, model_dir: str) -> float:
        """Swap in another model dir of the same architecture; returns seconds taken."""
        check_same_architecture(self.architecture, model_dir)
        return self.update_weights(read_weights(model_dir, tied=False))  # a tied head shares the embedding

    def close(self) -> None:
        del self.model


def group_seed(seed: int, prompt_ids: Sequence[int]) -> int:
    """A 63-bit seed for one prompt group: a stable hash of the call's seed and the prompt's token ids (not
    Python's ``hash``, which differs between processes)."""
    import hashlib

    digest = hashlib.blake2b(repr((int(seed), [int(t) for t in prompt_ids])).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def find_hf_routers(model) -> list:
    """(layer index, router module) of every MoE router that returns top-k indices, in layer order.

    transformers 5 MoE routers (``MixtralTopKRouter`` at ``model.layers.N.mlp.gate``, ...) return
    ``(router_logits, weights, indices)``. Found by class name; ``HFEngine.route`` checks the indices.
    """
    from .routing_capture import layer_index

    found = []
    for name, module in model.named_modules():
        if "router" not in type(module).__name__.lower() or not any(p == "layers" for p in name.split(".")):
            continue
        found.append((layer_index(name), module))
    return sorted(found, key=lambda item: item[0])
