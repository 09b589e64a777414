"""Bradley-Terry reward model: the loss, pair tokenization, training a tiny model, the saved model as a
reward, and synthetic / file preference pairs."""
import json
import math
import random

import pytest
import torch

import tasks
from rewards.accuracy import accuracy_reward
from rewards.countdown import countdown_reward
from rewards.format import format_reward
from rewards.instruction import instruction_reward
from rewards.learned_reward import RewardModelScorer, clear_scorers, reward_model_reward
from tasks.preferences import PAIR_FIELDS, make_preference_pairs, perturb_number, read_preference_pairs
from trainer.bradley_terry import (RewardModelSettings, RewardModelTrainer, bradley_terry_loss, encode_conversation,
                                  tokenize_pair)


# ---- the loss -----------------------------------------------------------------------------------------------

def _reference(chosen, rejected, margin):
    losses = [-math.log(1.0 / (1.0 + math.exp(-(c - r - m)))) for c, r, m in zip(chosen, rejected, margin)]
    return sum(losses) / len(losses)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bt_loss_matches_a_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    chosen, rejected = torch.randn(17, generator=gen) * 3, torch.randn(17, generator=gen) * 3
    margin = torch.rand(17, generator=gen)
    loss, metrics = bradley_terry_loss(chosen, rejected)
    assert float(loss) == pytest.approx(_reference(chosen.tolist(), rejected.tolist(), [0.0] * 17), rel=1e-5)
    loss_m, metrics_m = bradley_terry_loss(chosen, rejected, margin)
    assert float(loss_m) == pytest.approx(_reference(chosen.tolist(), rejected.tolist(), margin.tolist()), rel=1e-5)
    wins = sum(c > r for c, r in zip(chosen.tolist(), rejected.tolist())) / 17
    assert metrics["accuracy"] == pytest.approx(wins) and metrics_m["accuracy"] == pytest.approx(wins)
    assert metrics["margin_mean"] == pytest.approx(float((chosen - rejected).mean()), abs=1e-6)
    assert metrics_m["margin_mean"] == metrics["margin_mean"]  # metrics ignore the margin


def test_bt_loss_gradient_pushes_chosen_up_and_rejected_down():
    chosen = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    rejected = torch.tensor([0.1, 0.5, 2.5], requires_grad=True)
    loss, _ = bradley_terry_loss(chosen, rejected)
    loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    assert torch.allclose(chosen.grad, -rejected.grad)


def test_bt_loss_margin_raises_the_loss_and_scalar_margins_work():
    chosen, rejected = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    plain, _ = bradley_terry_loss(chosen, rejected)
    with_margin, _ = bradley_terry_loss(chosen, rejected, torch.tensor([0.5, 0.5]))
    scalar, _ = bradley_terry_loss(chosen, rejected, 0.5)
    assert float(with_margin) > float(plain)
    assert float(scalar) == pytest.approx(float(with_margin))
    tie, metrics = bradley_terry_loss(torch.zeros(4), torch.zeros(4))
    assert float(tie) == pytest.approx(math.log(2)) and metrics["accuracy"] == 0.0


def test_bt_loss_rejects_shape_mismatch_and_empty_input():
    with pytest.raises(ValueError, match="shape"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="margin"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="no pairs"):
        bradley_terry_loss(torch.zeros(0), torch.zeros(0))


# ---- tokenization --------------------------------------------------------------------------------------------

def test_tokenize_pair_renders_the_whole_conversation_once(smollm2_tokenizer):
    tok = smollm2_tokenizer
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    chosen_text, rejected_text = "<think>\n2 + 2 = 4\n</think>\n<answer>\n4\n</answer>", "It is 5."
    chosen, rejected = tokenize_pair(tok, prompt, chosen_text, rejected_text, max_length=512)
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    for ids, text in ((chosen, chosen_text), (rejected, rejected_text)):
        decoded = tok.decode(ids)
        assert decoded.rstrip().endswith(text + "<|im_end|>")  # the template may add a newline after it
        assert end_of_turn in ids[-2:]
        expected = tok.apply_chat_template(prompt + [{"role": "assistant", "content": text}], tokenize=False)
        assert ids == tok(expected, add_special_tokens=False)["input_ids"]
        assert decoded.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    common = next(i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b)
    assert tok.decode(chosen[:common]).endswith("<|im_start|>assistant\n")  # same prompt prefix
    assert tokenize_pair(tok, prompt, chosen_text, rejected_text, max_length=len(rejected)) is None  # chosen too long
    assert tokenize_pair(tok, prompt, chosen_text, rejected_text, max_length=len(chosen)) is not None


# ---- training a tiny model -------------------------------------------------------------------------------

def _toy_pairs(tokenizer, n=6):
    """Pairs where the chosen answer is always polite and right, the rejected one rude: a systematic signal."""
    pairs = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"What is {i} plus {i}?"}]
        pairs.append(tokenize_pair(tokenizer, prompt, f"Sure, thanks for asking: it is {2 * i}.",
                                   f"No. Figure it out yourself, {i}!", max_length=256))
    return [p[0] for p in pairs], [p[1] for p in pairs]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, smollm2_tokenizer):
    chosen, rejected = _toy_pairs(smollm2_tokenizer)
    trainer = RewardModelTrainer(tiny_model_dir, RewardModelSettings(lr=3e-3, micro_batch_size=4, precision="fp32"))
    history = [trainer.train_step(chosen, rejected) for _ in range(30)]
    return trainer, chosen, rejected, history


def test_trainer_sets_pad_and_learns_a_systematic_preference(trained, smollm2_tokenizer):
    trainer, chosen, rejected, history = trained
    assert trainer.model.config.pad_token_id == smollm2_tokenizer.pad_token_id
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=0.05)  # a fresh head scores ~0
    assert history[-1]["loss"] < 0.2 * history[0]["loss"]
    assert history[-1]["accuracy"] == 1.0 and history[-1]["margin_mean"] > 1.0
    assert set(history[-1]) >= {"loss", "accuracy", "margin_mean", "seconds", "grad_norm"}
    ev = trainer.evaluate(chosen, rejected)
    assert ev["accuracy"] == 1.0 and ev["loss"] < 0.2 * math.log(2)
    assert trainer.model.training  # scores()/evaluate() put it back in train mode


def test_micro_batches_give_the_same_step_as_one_batch(tiny_model_dir, smollm2_tokenizer):
    chosen, rejected = _toy_pairs(smollm2_tokenizer, n=5)
    results = []
    for micro in (5, 2):
        trainer = RewardModelTrainer(tiny_model_dir, RewardModelSettings(lr=1e-3, micro_batch_size=micro,
                                                                         precision="fp32", grad_clip=0.0))
        metrics = trainer.train_step(chosen, rejected)
        results.append((metrics, trainer.model.score.weight.detach().clone()))
    (one, w_one), (many, w_many) = results
    for key in ("loss", "accuracy", "margin_mean", "grad_norm"):
        assert many[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    assert torch.allclose(w_one, w_many, atol=1e-6)


def test_train_step_checks_its_input_and_bf16_runs(tiny_model_dir, smollm2_tokenizer):
    chosen, rejected = _toy_pairs(smollm2_tokenizer, n=3)
    trainer = RewardModelTrainer(tiny_model_dir, RewardModelSettings(lr=1e-3, max_length=64, batch_size=2,
                                                                     epochs=1.0))
    with pytest.raises(ValueError, match="chosen"):
        trainer.train_step(chosen, rejected[:2])
    with pytest.raises(ValueError, match="max_length"):
        trainer.train_step([chosen[0] + [1] * 64], [rejected[0]])
    history = trainer.train(chosen, rejected)  # bf16 autocast, ceil(1.0 * 3 / 2) = 2 steps
    assert len(history) == 2 and all(math.isfinite(m["loss"]) for m in history)
    assert all(isinstance(s, float) for s in trainer.scores(chosen))


# ---- the saved model as a reward ------------------------------------------------------------------------

def test_save_pretrained_and_scorer_round_trip(trained, tmp_path):
    trainer, chosen, rejected, _ = trained
    out = tmp_path / "rm"
    out.mkdir()
    (out / "stale.txt").write_text("old run")
    assert trainer.save_pretrained(out) == str(out)
    assert not (out / "stale.txt").exists() and (out / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]  # no temp dirs left behind
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["pad_token_id"] is not None

    scorer = RewardModelScorer(str(out))
    prompt = [{"role": "user", "content": "What is 3 plus 3?"}]
    good, bad = "Sure, thanks for asking: it is 6.", "No. Figure it out yourself, 3!"
    ids = [encode_conversation(trainer.tokenizer, prompt, good), encode_conversation(trainer.tokenizer, prompt, bad)]
    expected = trainer.scores(ids)
    assert scorer.score_batch([(prompt, good), (prompt, bad)]) == pytest.approx(expected, abs=1e-5)
    assert scorer.score(prompt, good) == pytest.approx(expected[0], abs=1e-5)
    assert expected[0] > expected[1]  # generalises to an unseen prompt of the same kind
    texts = [(i, f"Sure, thanks for asking: it is {2 * i}.") for i in range(6)]
    texts += [(i, f"No. Figure it out yourself, {i}!") for i in range(6)]
    items = [([{"role": "user", "content": f"What is {i} plus {i}?"}], text) for i, text in texts]
    assert scorer.score_batch(items) == pytest.approx(trainer.scores(chosen + rejected), abs=1e-5)

    clear_scorers()
    sample = {"prompt": "What is 3 plus 3?"}
    raw = reward_model_reward(good, sample, model=str(out), squash=False)
    assert raw.reason == "ok" and float(raw) == pytest.approx(expected[0], abs=1e-5)
    squashed = reward_model_reward(good, sample, model=str(out), scale=2.0, offset=0.5)
    assert float(squashed) == pytest.approx(1 / (1 + math.exp(-(expected[0] - 0.5) * 2.0)), abs=1e-5)
    assert reward_model_reward(bad, sample, model=str(out)) < reward_model_reward(good, sample, model=str(out))
    assert reward_model_reward("   ", sample, model=str(out)).reason == "empty_completion"
    with_system = reward_model_reward(good, sample, model=str(out), system_prompt="Be kind.", squash=False)
    assert float(with_system) == pytest.approx(
        scorer.score([{"role": "system", "content": "Be kind."}] + prompt, good), abs=1e-5)
    clear_scorers()


def test_reward_model_reward_in_bf16_keeps_the_ranking_and_its_own_scorer(trained, tmp_path):
    trainer, _, _, _ = trained
    out = tmp_path / "rm"
    trainer.save_pretrained(out)
    clear_scorers()
    sample = {"prompt": "What is 3 plus 3?"}
    good, bad = "Sure, thanks for asking: it is 6.", "No. Figure it out yourself, 3!"
    fp32 = reward_model_reward(good, sample, model=str(out), squash=False)
    bf16 = reward_model_reward(good, sample, model=str(out), squash=False, precision="bf16")
    assert bf16.reason == "ok" and float(bf16) == pytest.approx(float(fp32), abs=0.25)
    assert float(bf16) != float(fp32)  # a scorer of its own (bf16 weights), not the fp32 one from the cache
    assert reward_model_reward(bad, sample, model=str(out), precision="bf16") < \
        reward_model_reward(good, sample, model=str(out), precision="bf16")
    clear_scorers()


def test_reward_model_precision_is_checked_by_name():
    from rewards import weighted_sum

    score = weighted_sum([{"name": "reward_model", "options": {"model": "/nowhere", "precision": "fp8"}}])
    total, parts = score("Hello.", {"prompt": "Hi"})
    assert total == 0.0 and parts["reward_model"].reason == "error:ValueError"
    with pytest.raises(ValueError, match="precision='fp8'"):
        reward_model_reward("Hello.", {"prompt": "Hi"}, model="/nowhere", precision="fp8")


def test_reward_model_reward_is_unavailable_for_a_bad_dir(tmp_path, tiny_model_dir, caplog):
    clear_scorers()
    missing = reward_model_reward("Hello.", {"prompt": "Hi"}, model=str(tmp_path / "nope"))
    assert missing == 0.0 and missing.reason == "model_unavailable"
    again = reward_model_reward("Hello.", {"prompt": "Hi"}, model=str(tmp_path / "nope"))
    assert again.reason == "model_unavailable"
    assert sum("could not be loaded" in r.getMessage() for r in caplog.records) == 1  # logged once
    # A causal LM is not a reward model: its score head would be random.
    assert reward_model_reward("Hello.", {"prompt": "Hi"}, model=tiny_model_dir).reason == "model_unavailable"
    clear_scorers()


# ---- preference pairs -------------------------------------------------------------------------------------

def _samples():
    samples = []
    for task in ("arithmetic", "word_problem", "linear_equation", "countdown", "instruction"):
        samples += tasks.make_splits(task, 12, 1, seed=0).train
    samples += [dict(s, id=f"{s['id']}-d3") for s in tasks.make_splits("instruction", 12, 1, seed=0,
                                                                           difficulty=3).train]
    return samples


def _verifier_check(sample):
    verifier = sample["verifier"]
    if verifier == "accuracy":
        return lambda text: accuracy_reward(text, sample, isolate=False)
    if verifier == "countdown":
        return lambda text: countdown_reward(text, sample)
    return lambda text: instruction_reward(text, sample, all_or_nothing=True)


def test_preference_pairs_prefer_the_correct_well_formed_response():
    samples = _samples()
    pairs = make_preference_pairs(samples, seed=0, system_prompt="Think, then answer.")
    assert len(pairs) == len(samples)
    kinds = set()
    for sample, pair in zip(samples, pairs):
        assert tuple(pair) == PAIR_FIELDS and pair["id"] == sample["id"] and pair["task"] == sample["task"]
        assert pair["prompt_messages"] == [{"role": "system", "content": "Think, then answer."},
                                           {"role": "user", "content": sample["prompt"]}]
        check = _verifier_check(sample)
        assert format_reward(pair["chosen"]) == 1.0 and check(pair["chosen"]) == 1.0
        assert pair["chosen"] != pair["rejected"]
        kinds.add((sample["verifier"], pair["kind"]))
        if pair["kind"] == "broken_format":
            assert format_reward(pair["rejected"]) == 0.0
        else:  # the content is what is wrong: well formed, but fails its verifier
            assert pair["kind"] == ("violates_constraints" if sample["verifier"] == "instruction" else "wrong_answer")
            assert format_reward(pair["rejected"]) == 1.0 and check(pair["rejected"]) == 0.0
    assert {("accuracy", "wrong_answer"), ("accuracy", "broken_format"), ("countdown", "wrong_answer"),
            ("instruction", "violates_constraints"), ("instruction", "broken_format")} <= kinds


def test_preference_pairs_are_deterministic_for_a_seed():
    samples = _samples()
    assert make_preference_pairs(samples, seed=3) == make_preference_pairs(samples, seed=3)
    assert make_preference_pairs(samples, seed=3) != make_preference_pairs(samples, seed=4)
    # A pair depends on its own sample, not on which others are in the list.
    assert make_preference_pairs(samples[:5], seed=3) == make_preference_pairs(samples, seed=3)[:5]


def test_preference_pairs_skip_samples_without_a_solution():
    samples = tasks.make_splits("arithmetic", 3, 1, seed=0).train
    pairs = make_preference_pairs([samples[0], {"id": "x", "prompt": "Hi", "answer": "1"}, samples[1]], seed=0)
    assert [p["id"] for p in pairs] == [samples[0]["id"], samples[1]["id"]]


def test_perturb_number_keeps_the_answer_parseable_and_different():
    rng = random.Random(0)
    for answer in ("42", "-7", "3/4", "2.5", "0", "10"):
        for _ in range(20):
            wrong = perturb_number(answer, rng)
            assert wrong != answer and "--" not in wrong
            completion = f"<think>\n</think>\n<answer>\n{wrong}\n</answer>"
            assert accuracy_reward(completion, {"answer": answer}, isolate=False).reason == "wrong"
    assert perturb_number("10 - 2 + 12 / 2", rng).endswith(" - 2 + 12 / 2")  # the first number changes
    assert perturb_number("no digits", rng) is None


def test_read_preference_pairs_jsonl_and_parquet(tmp_path):
    rows = [
        {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
        {"id": "p2", "task": "chat", "kind": "human",
         "prompt": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Greet me."}],
         "chosen": "Hello there.", "rejected": "Go away."},
        {"chosen": [{"role": "user", "content": "Thanks?"}, {"role": "assistant", "content": "You're welcome."}],
         "rejected": [{"role": "user", "content": "Thanks?"}, {"role": "assistant", "content": "Whatever."}]},
    ]
    tasks.write_jsonl(rows, tmp_path / "prefs.jsonl")
    pairs = read_preference_pairs(tmp_path / "prefs.jsonl", system_prompt="Sys.")
    assert [tuple(p) for p in pairs] == [PAIR_FIELDS] * 3
    assert pairs[0] == {"id": "prefs-000000", "task": "prefs", "kind": "data", "chosen": "Hi!", "rejected": "No.",
                        "prompt_messages": [{"role": "system", "content": "Sys."},
                                            {"role": "user", "content": "Say hi."}]}
    assert pairs[1]["id"] == "p2" and pairs[1]["kind"] == "human" and pairs[1]["prompt_messages"][0]["content"] == "Be nice."
    assert pairs[2]["prompt_messages"][1:] == [{"role": "user", "content": "Thanks?"}]
    assert pairs[2]["chosen"] == "You're welcome." and pairs[2]["rejected"] == "Whatever."

    made = make_preference_pairs(tasks.make_splits("arithmetic", 4, 1, seed=0).train, seed=0)
    table = [{"prompt": p["prompt_messages"][-1]["content"], "chosen": p["chosen"], "rejected": p["rejected"]}
             for p in made]
    tasks.write_parquet(table, tmp_path / "prefs.parquet")
    back = read_preference_pairs(tmp_path / "prefs.parquet")
    assert [(p["prompt_messages"], p["chosen"], p["rejected"]) for p in back] == \
        [(p["prompt_messages"], p["chosen"], p["rejected"]) for p in made]


def test_read_preference_pairs_names_the_file_and_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    tasks.write_jsonl([{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}], path)
    with pytest.raises(ValueError) as error:
        read_preference_pairs(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "row 2" in message and "'rejected'" in message
    tasks.write_jsonl([{"chosen": "b", "rejected": "c"}], path)
    with pytest.raises(ValueError, match=r"row 1: missing field 'prompt'"):
        read_preference_pairs(path)
    tasks.write_jsonl([{"prompt": [{"role": "user"}], "chosen": "b", "rejected": "c"}], path)
    with pytest.raises(ValueError, match=r"row 1: field 'prompt' message 0"):
        read_preference_pairs(path)
