import math

import pytest
import torch
from tiny_model import tiny_adapter_dir, tiny_chats, tiny_model_dir

from srlm.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
from srlm.engines.types import SamplingParams


@pytest.fixture(scope="module")
def engine():
    return TransformersEngine(tiny_model_dir(), TransformersEngineConfig(device="cpu", batch_size=5))


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


class _CharTokenizer:
    """One id per character; like Llama's tokenizer it puts a bos (id 1) in front when asked."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}


def test_encode_pair_adds_the_leading_bos_once():
    from srlm.engines.transformers_engine import encode_pair

    tok = _CharTokenizer()
    assert encode_pair(tok, "Q: a ", "B") == ([1, ord("Q"), ord(":"), ord(" "), ord("a")], [ord(" "), ord("B")])
    rendered = "\x01Q"  # a context whose text already starts with the bos token's id
    assert encode_pair(tok, rendered, "x")[0] == [1, ord("Q")]
    assert encode_pair(tok, "", "x") == ([1], [ord("x")])
