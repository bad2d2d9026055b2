import math

import pytest
import torch
from conftest import engine_settings
from tiny_model import tiny_adapter_dir, tiny_chats, tiny_model_dir

from srlm.engines.tokenization import encode_pair, scoring_window
from srlm.engines.transformers_engine import TransformersEngine
from srlm.engines.types import SamplingParams


@pytest.fixture(scope="module")
def engine():
    return TransformersEngine(tiny_model_dir(), engine_settings(batch_size=5))


def chats(n, seed=3):
    return [chat[:1] for chat in tiny_chats(n, seed=seed)]


def test_shapes_order_and_n(engine):
    prompts = chats(4) + ["A raw prompt with no template"]
    outs = engine.generate(prompts, SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=1))
    assert [o.prompt_index for o in outs] == list(range(5))
    for out in outs:
        assert len(out.completions) == 3
        for c in out.completions:
            assert 1 <= c.n_tokens <= 12 and c.finish_reason in ("stop", "length")
            assert "<|end|>" not in c.text and "<|pad|>" not in c.text
    # results are in input order: prompt 2 alone gives what it got in the batch
    alone = engine.generate([prompts[2]], SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=1))
    assert [c.text for c in alone[0].completions] == [c.text for c in outs[2].completions]


def test_sampling_is_seeded(engine):
    prompts = chats(6)
    params = SamplingParams(n=2, temperature=1.0, top_p=0.95, max_new_tokens=16, seed=7)
    first = engine.generate(prompts, params)
    again = engine.generate(prompts, params)
    assert first == again
    other = engine.generate(prompts, SamplingParams(n=2, temperature=1.0, top_p=0.95, max_new_tokens=16, seed=8))
    assert [c.text for o in first for c in o.completions] != [c.text for o in other for c in o.completions]
    # the n samples of one prompt differ from each other
    assert any(o.completions[0].text != o.completions[1].text for o in first)


def test_greedy_matches_a_manual_argmax_decode(engine):
    prompt = chats(1)[0]
    out = engine.generate([prompt], SamplingParams(n=2, temperature=0, max_new_tokens=10))[0]
    assert out.completions[0] == out.completions[1]
    ids = engine.tokenizer(engine.render_chat(prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
    generated = []
    with torch.no_grad():
        for _ in range(out.completions[0].n_tokens):
            nxt = int(engine.model(ids).logits[0, -1].argmax())
            generated.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
            if nxt == engine.tokenizer.eos_token_id:
                break
    assert engine.tokenizer.decode(generated, skip_special_tokens=True) == out.completions[0].text
    # greedy is the same batched with other prompts of other lengths (left padding is handled)
    batched = engine.generate(chats(7) + [prompt], SamplingParams(temperature=0, max_new_tokens=10))
    assert batched[-1].completions[0] == out.completions[0]


def test_finish_reasons(engine):
    prompts = chats(4)
    short = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=2))
    assert all(c.finish_reason == "length" and c.n_tokens == 2 for o in short for c in o.completions)
    full = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=60))
    stopped = [c for o in full for c in o.completions if c.finish_reason == "stop"]
    assert stopped, "the tiny model should end some answers with <|end|>"
    for c in stopped:
        assert c.n_tokens <= 60


def test_stop_strings(engine):
    prompts = chats(4)
    base = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=30))
    texts = [o.completions[0].text for o in base]
    # pick a stop string that occurs in the middle of the first text
    target = texts[0]
    stop = target[len(target) // 2 : len(target) // 2 + 3]
    assert stop and stop in target
    cut = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=30, stop=(stop,)))
    for original, out in zip(texts, cut):
        c = out.completions[0]
        if stop in original:
            assert c.finish_reason == "stop" and c.text == original[: original.index(stop)]
            assert stop not in c.text
        else:
            assert c.text == original
    first = cut[0].completions[0]
    assert first.n_tokens < base[0].completions[0].n_tokens or base[0].completions[0].finish_reason == "length"


def test_rows_that_end_early_leave_the_batch_without_changing_the_others(engine):
    """A prompt near the context limit has a small budget: it ends first, and the batch drops it (the cache
    is copied without it); every row must still be what it is decoded alone."""
    filler = " ".join(["apples"] * 400)
    near_limit = engine.tokenizer.decode(engine.tokenizer(filler)["input_ids"][: engine.max_length - 6])
    prompts = [near_limit] + chats(4)
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=24, seed=5)
    together = engine.generate(prompts, params)
    assert together[0].completions[0].n_tokens <= 6 < max(c.n_tokens for o in together[1:] for c in o.completions)
    for prompt, out in zip(prompts, together):
        assert engine.generate([prompt], params)[0].completions == out.completions


def test_too_long_prompt_names_its_index(engine):
    long = "word " * (engine.max_length + 10)
    with pytest.raises(ValueError, match="prompt 1 "):
        engine.generate(["short", long], SamplingParams(max_new_tokens=2))


def test_count_tokens_and_render(engine):
    text = engine.render_chat([{"role": "user", "content": "Hi"}])
    assert text == "<|user|>\nHi<|end|>\n<|assistant|>\n"
    assert engine.count_tokens([text, ""]) == [len(engine.tokenizer(text, add_special_tokens=False)["input_ids"]), 0]


def _manual_logprob(engine, context, continuation):
    ctx = engine.tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = engine.tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx) :]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(ids).logits[0].float(), dim=-1)
    return sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont)), len(cont)


def test_logprobs_match_manual_and_batching(engine):
    requests = []
    for chat in tiny_chats(7, seed=5):
        requests.append((engine.render_chat(chat[:1]), chat[1]["content"]))
    requests.append(("The quiet river", " is near."))
    batched = engine.logprobs(requests)
    for (context, continuation), lp in zip(requests, batched):
        total, n = _manual_logprob(engine, context, continuation)
        assert lp.n_tokens == n
        assert lp.total == pytest.approx(total, abs=1e-4)
        assert lp.total < 0 and math.isfinite(lp.mean)
    single = [engine.logprobs([r])[0] for r in requests]
    for a, b in zip(batched, single):
        assert a.n_tokens == b.n_tokens and abs(a.total - b.total) < 1e-4


def _tokens_run(engine):
    """A counter of the token positions the model runs (padding included), through a hook on its embedding."""
    counted = [0]
    handle = engine.model.get_input_embeddings().register_forward_hook(
        lambda module, args, out: counted.__setitem__(0, counted[0] + args[0].numel())
    )
    return counted, handle


def test_shared_contexts_score_like_separate_sequences(engine):
    """Multiple-choice style requests (one context, several continuations) run each context once, and score
    what a separate forward pass per request scores. One question has more choices than batch_size (5)."""
    choices = [chat[1]["content"] for chat in tiny_chats(4, seed=12)]
    questions = [[(engine.render_chat(chat[:1]), c) for c in choices] for chat in tiny_chats(5, seed=11)]
    questions.append([("The quiet river", f" is {adj}.") for adj in ("near", "old", "red", "fast", "calm", "big", "x")])
    requests = [r for q in questions for r in q]
    counted, handle = _tokens_run(engine)
    try:
        got = engine.logprobs(requests + [("The green forest", " is quiet.")])
    finally:
        handle.remove()
    expected = [_manual_logprob(engine, c, t) for c, t in requests + [("The green forest", " is quiet.")]]
    for lp, (total, n) in zip(got, expected):
        assert lp.n_tokens == n and lp.total == pytest.approx(total, abs=1e-4)
    start = 0
    for q in questions:  # the same choice per question
        new, old = got[start : start + len(q)], expected[start : start + len(q)]
        assert max(range(len(q)), key=lambda i: new[i].total) == max(range(len(q)), key=lambda i: old[i][0])
        start += len(q)
    separately = sum(len(engine.tokenizer(c + t, add_special_tokens=False)["input_ids"]) for c, t in requests)
    assert counted[0] < 0.8 * separately  # one pass per request would run more than all of them (padding)


def test_logprobs_edge_cases(engine):
    empty = engine.logprobs([("context", "")])[0]
    assert (empty.total, empty.n_tokens) == (0.0, 0)
    no_context = engine.logprobs([("", "Ada has 3 apples.")])[0]
    assert no_context.n_tokens > 0 and no_context.total < 0
    # over the context: truncated from the left, same count as the window allows
    long_context = "apples " * engine.max_length
    lp = engine.logprobs([(long_context, " and pens.")])[0]
    assert lp.n_tokens > 0 and math.isfinite(lp.total)


def test_adapter_changes_outputs_and_none_returns_to_base(engine):
    adapter = str(tiny_adapter_dir())
    prompts = chats(3)
    params = SamplingParams(temperature=0, max_new_tokens=8)
    base = engine.generate(prompts, params)
    tuned = engine.generate(prompts, params, adapter=adapter)
    assert [o.completions[0].text for o in tuned] != [o.completions[0].text for o in base]
    assert sum("forest is quiet" in o.completions[0].text for o in tuned) >= 2
    assert engine.generate(prompts, params, adapter=None) == base
    request = [(engine.render_chat(prompts[0]), "The green forest is quiet.")]
    lp_base = engine.logprobs(request)[0]
    lp_tuned = engine.logprobs(request, adapter=adapter)[0]
    assert lp_tuned.total > lp_base.total + 1.0
    assert engine.logprobs(request)[0] == lp_base
    # loaded once, reused
    engine.generate(prompts[:1], params, adapter=adapter)
    assert len(engine._adapters) == 1


def _fresh_adapter(path, use_dora: bool) -> str:
    """A LoRA (or DoRA) adapter on the tiny model with random, non-zero weights everywhere."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir()))
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=use_dora, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(path))
    return str(path)


@pytest.mark.parametrize("use_dora", [False, True])
def test_merged_adapter_scores_like_peft_and_leaves_the_base_untouched(engine, tmp_path, use_dora):
    adapter = _fresh_adapter(tmp_path / "lora", use_dora)
    name = engine._adapter_name(adapter)  # loaded (peft wraps the layers) before the weights are compared
    before = {k: v.clone() for k, v in engine.model.state_dict().items() if "lora" not in k}
    request = (engine.render_chat(chats(1)[0]), "The green forest is quiet.")
    merged = engine.logprobs([request], adapter=adapter)[0]
    engine.generate(chats(2), SamplingParams(temperature=0, max_new_tokens=4), adapter=adapter)
    after = {k: v for k, v in engine.model.state_dict().items() if "lora" not in k}
    assert all(torch.equal(before[k], after[k]) for k in before)  # restored exactly, no unmerge rounding
    # peft's own (unmerged) forward with the adapter active
    engine._peft.set_adapter(name, inference_mode=True)
    ctx, cont = encode_pair(engine.tokenizer, *request)
    with torch.no_grad():
        logp = torch.log_softmax(engine._peft(input_ids=torch.tensor([ctx + cont[:-1]])).logits[0].float(), dim=-1)
    unmerged = sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
    assert merged.total == pytest.approx(unmerged, abs=1e-4)
    assert abs(merged.total - engine.logprobs([request])[0].total) > 1e-3  # the adapter does change the score


class _CharTokenizer:
    """One id per character; like Llama's tokenizer it puts a bos (id 1) in front when asked."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}


def test_encode_pair_adds_the_leading_bos_once():
    tok = _CharTokenizer()
    assert encode_pair(tok, "Q: a ", "B") == ([1, ord("Q"), ord(":"), ord(" "), ord("a")], [ord(" "), ord("B")])
    rendered = "\x01Q"  # a context whose text already starts with the bos token's id
    assert encode_pair(tok, rendered, "x")[0] == [1, ord("Q")]
    assert encode_pair(tok, "", "x") == ([1], [ord("x")])


def test_the_scoring_window_cuts_the_context_first():
    tok = _CharTokenizer()
    assert scoring_window(tok, "abcdef", "xyz", 5) == ([ord(c) for c in "efxyz"], 3)
    # a continuation longer than the window keeps its last tokens, all scored but the first
    assert scoring_window(tok, "ab", "wxyz", 3) == ([ord(c) for c in "xyz"], 2)
