import pytest
from fake_openai_server import FakeOpenAIServer, fake_text

from srlm.engines.openai_engine import OpenAIChatEngine, OpenAIEngineError, OpenAIEngineSettings
from srlm.engines.types import SamplingParams

SECRET = "sk-test-not-a-real-key-123"


@pytest.fixture()
def server():
    with FakeOpenAIServer() as s:
        yield s


def engine_for(server, **kw):
    fields = dict(base_url=server.base_url, model="fake-model", api_key_env="SRLM_TEST_KEY", retry_backoff_s=0.01, timeout_s=5)
    fields.update(kw)
    return OpenAIChatEngine(OpenAIEngineSettings(**fields))


def test_success_in_order_with_chat_and_raw_prompts(server, monkeypatch):
    monkeypatch.setenv("SRLM_TEST_KEY", SECRET)
    prompts = ["one two three", [{"role": "system", "content": "sys"}, {"role": "user", "content": "alpha beta"}]] * 3
    outs = engine_for(server).generate(prompts, SamplingParams(temperature=0.5, max_new_tokens=50, seed=9))
    assert [o.prompt_index for o in outs] == list(range(6))
    assert outs[0].completions[0].text == "c0 s9 three two one"
    assert outs[1].completions[0].text == "c0 s9 beta alpha"
    assert outs[0].completions[0].n_tokens == 5 and outs[0].completions[0].finish_reason == "stop"
    headers, body = server.requests[0]
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert body["model"] == "fake-model" and body["n"] == 1 and body["max_tokens"] == 50
    assert body["seed"] == 9 and body["temperature"] == 0.5 and body["top_p"] == 1.0
    assert {b["messages"][0]["role"] for _, b in server.requests} == {"user", "system"}


def test_n_samples_length_and_stop(server):
    out = engine_for(server).generate(["a b c d e f"], SamplingParams(n=3, max_new_tokens=4))[0]
    assert [c.text for c in out.completions] == [fake_text({"messages": [{"role": "user", "content": "a b c d e f"}],
                                                            "max_tokens": 4, "seed": 0}, i)[0] for i in range(3)]
    assert all(c.finish_reason == "length" for c in out.completions)
    assert sum(c.n_tokens for c in out.completions) == 12
    stopped = engine_for(server).generate(["a b c d"], SamplingParams(stop=(" c",)))[0].completions[0]
    assert stopped.text == "c0 s0 d" and stopped.finish_reason == "stop"
    assert server.requests[-1][1]["stop"] == [" c"]


def test_no_auth_header_without_key(server, monkeypatch):
    monkeypatch.delenv("SRLM_TEST_KEY", raising=False)
    engine_for(server).generate(["x"], SamplingParams())
    assert "Authorization" not in server.requests[0][0]


def test_retry_then_success(server):
    server.fail_next(429)
    server.fail_next(503)
    out = engine_for(server, max_retries=3).generate(["x y"], SamplingParams())
    assert out[0].completions[0].text == "c0 s0 y x"
    assert len(server.requests) == 3


def test_retries_exhausted(server):
    server.fail_next(500, times=5)
    with pytest.raises(OpenAIEngineError, match="after 3 tries: HTTP 500"):
        engine_for(server, max_retries=2).generate(["x"], SamplingParams())


def test_hard_error_is_not_retried_and_hides_the_key(server, monkeypatch):
    monkeypatch.setenv("SRLM_TEST_KEY", SECRET)
    server.fail_next(401)
    with pytest.raises(OpenAIEngineError, match="HTTP 401") as err:
        engine_for(server).generate(["x"], SamplingParams())
    assert len(server.requests) == 1
    assert SECRET not in str(err.value) and "injected 401" in str(err.value)


def test_bad_request_reports_the_server_message(server):
    with pytest.raises(OpenAIEngineError, match="HTTP 400.*invalid message"):
        engine_for(server).generate([[{"role": "robot", "content": "x"}]], SamplingParams())
    assert len(server.requests) == 1


def test_malformed_body(server):
    server.malformed_next()
    with pytest.raises(OpenAIEngineError, match="malformed response.*not JSON.*definitely not json"):
        engine_for(server).generate(["x"], SamplingParams())


def test_connection_refused_is_retried_then_reported():
    engine = OpenAIChatEngine(OpenAIEngineSettings(base_url="http://127.0.0.1:9/v1", model="m", api_key_env=None, max_retries=1,
                                                 retry_backoff_s=0.01, timeout_s=2))
    with pytest.raises(OpenAIEngineError, match="after 2 tries"):
        engine.generate(["x"], SamplingParams())


def test_adapter_is_refused(server):
    with pytest.raises(ValueError, match="adapter"):
        engine_for(server).generate(["x"], SamplingParams(), adapter="some/lora")
