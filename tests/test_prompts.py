"""Prompt templates: the two tasks' formats, and reading a rationale out of a generation."""

from srlm import prompts


def test_answer_completion_wraps_the_rationale_in_think_tags():
    assert prompts.answer_completion("step 1", "42") == "<think>step 1</think>\n42"
    assert prompts.answer_completion(None, "42") == "<think></think>\n42"


def test_enrich_and_teacher_prompts_name_every_skill_and_the_parts():
    for build in (prompts.enrich_messages, prompts.teacher_messages):
        [message] = build("Add 2 and 3.", "numbers", "5", "The answer is 5.")
        assert message["role"] == "user"
        for part in (*prompts.SKILLS, "Add 2 and 3.", "numbers", "The answer is 5."):
            assert part in message["content"]
    assert prompts.enrich_messages("x", None, None, "y")[0]["content"] != prompts.teacher_messages("x", None, None, "y")[0]["content"]
    assert prompts.NO_RATIONALE in prompts.enrich_messages("x", None, None, "y")[0]["content"]


def test_strip_think_keeps_the_text_between_the_tags():
    assert prompts.strip_think("  <think> a b </think>\nanswer") == "a b"
    assert prompts.strip_think("<think><think>repeated open") == "repeated open"
    assert prompts.strip_think("plain rationale") == "plain rationale"
    assert prompts.strip_think("<think></think>") == ""
    assert prompts.strip_think("<think></think>\nsteps here</think>\n42") == "steps here"
