"""``components.serving.openai_api``'s rules without a server: the decoding a request asks for, the fields refused, how
a conversation becomes the instruction and input the model was trained on. Through the HTTP API, with the official
client: test_openai_server.py."""

from __future__ import annotations

import pytest

from components.data import source_text
from components.decoding import Decoding
from components.serving.openai_api import AT_DEFAULT, COMPLETION_FIELDS, ApiError, Limits, chat_source, check_fields, requested_decoding

DEFAULTS = Decoding(num_beams=3, do_sample=False, temperature=0.8, top_k=7, top_p=0.9, max_new_tokens=33)  # an export's own
LIMITS = Limits(max_tokens=40)


@pytest.mark.parametrize(
    "body, decoding",
    [
        ({}, DEFAULTS),  # nothing asked: the export's decoding
        ({"max_tokens": 5}, Decoding(3, False, 0.8, 7, 0.9, 5)),
        ({"temperature": 0}, DEFAULTS),  # search, as the export's: its beams kept
        ({"temperature": 0, "num_beams": 1}, Decoding(1, False, 0.8, 7, 0.9, 33)),
        ({"temperature": 0, "top_p": 0.5}, DEFAULTS),  # top_p does nothing without sampling
        ({"temperature": 0.7}, Decoding(1, True, 0.7, 0, 1.0, 33)),  # OpenAI's sampling: no top-k, top_p 1
        ({"top_p": 0.5}, Decoding(1, True, 1.0, 0, 0.5, 33)),
        ({"top_k": 4}, Decoding(1, True, 1.0, 4, 1.0, 33)),
        ({"temperature": 1.2, "top_p": 0.3, "top_k": 9, "max_tokens": 40}, Decoding(1, True, 1.2, 9, 0.3, 40)),
        ({"num_beams": 4}, Decoding(4, False, 0.8, 7, 0.9, 33)),
        ({"temperature": 0.5, "num_beams": 1}, Decoding(1, True, 0.5, 0, 1.0, 33)),
        ({"max_tokens": None, "temperature": None}, DEFAULTS),  # null is not given
    ],
)
def test_a_request_asks_for_the_exports_decoding_changed_by_what_it_gives(body, decoding):
    assert requested_decoding(body, DEFAULTS, LIMITS) == decoding


def test_chat_may_give_the_limit_as_max_completion_tokens():
    assert requested_decoding({"max_completion_tokens": 6}, DEFAULTS, LIMITS, "max_completion_tokens").max_new_tokens == 6


@pytest.mark.parametrize(
    "body, message",
    [
        ({"max_tokens": 0}, "max_tokens must be an integer from 1 to 40, not 0."),
        ({"max_tokens": 41}, "max_tokens must be an integer from 1 to 40, not 41."),
        ({"max_tokens": 2.0}, "max_tokens must be an integer from 1 to 40, not 2.0."),
        ({"max_tokens": False}, "max_tokens must be an integer from 1 to 40, not False."),
        ({"temperature": -0.1}, "temperature must be a number from 0 to 2, not -0.1."),
        ({"temperature": 2.5}, "temperature must be a number from 0 to 2, not 2.5."),
        ({"temperature": "1"}, "temperature must be a number from 0 to 2, not '1'."),
        ({"top_p": 1.5}, "top_p must be a number from 0.0 to 1.0, not 1.5."),
        ({"top_k": -1}, "top_k must be an integer from 0 to 1000, not -1."),
        ({"num_beams": 0}, "num_beams must be an integer from 1 to 16, not 0."),
        ({"num_beams": 17}, "num_beams must be an integer from 1 to 16, not 17."),
        ({"temperature": 0.9, "num_beams": 2}, "num_beams > 1 searches; it does not sample: give temperature 0 with it, or no num_beams."),
    ],
)
def test_a_value_out_of_range_is_a_400_naming_the_field(body, message):
    with pytest.raises(ApiError) as refused:
        requested_decoding(body, DEFAULTS, LIMITS)
    assert (refused.value.status, refused.value.message, refused.value.param) == (400, message, next(iter(body)) if len(body) == 1 else "num_beams")


def test_the_limits_bounds_are_themselves_allowed():
    edges = {"max_tokens": 40, "temperature": 2, "top_p": 1.0, "top_k": 1000, "num_beams": 16}
    assert requested_decoding({**edges, "temperature": 0}, DEFAULTS, LIMITS) == Decoding(16, False, 0.8, 7, 0.9, 40)
    assert requested_decoding({"max_tokens": 1, "temperature": 2, "top_p": 0.0, "top_k": 0}, DEFAULTS, LIMITS) == Decoding(1, True, 2, 0, 0.0, 1)


def test_fields_the_server_does_not_implement_are_refused_unless_at_their_default():
    for name, accepted in AT_DEFAULT.items():
        for value in accepted:
            check_fields({"model": "m", name: value}, COMPLETION_FIELDS)
        with pytest.raises(ApiError) as refused:
            check_fields({"model": "m", name: "something else"}, COMPLETION_FIELDS)
        assert (refused.value.status, refused.value.message, refused.value.param) == (
            400,
            f"{name} is not supported by this server: leave it out.",
            name,
        )
    with pytest.raises(ApiError) as unknown:
        check_fields({"messages": []}, COMPLETION_FIELDS)
    assert (unknown.value.message, unknown.value.param) == ("Unknown field 'messages'.", "messages")
    for stream in (True, False):
        check_fields({"stream": stream}, COMPLETION_FIELDS)
    with pytest.raises(ApiError) as refused:
        check_fields({"stream": 1}, COMPLETION_FIELDS)
    assert refused.value.message == "stream must be true or false."


@pytest.mark.parametrize(
    "messages, source",
    [
        ([{"role": "user", "content": "Назови столицу."}], source_text("Назови столицу.", "")),
        ([{"role": "system", "content": "Переведи."}, {"role": "user", "content": "кошка"}], source_text("Переведи.", "кошка")),
        ([{"role": "developer", "content": "Переведи."}, {"role": "user", "content": "кошка"}], source_text("Переведи.", "кошка")),
        ([{"role": "user", "content": [{"type": "text", "text": "Назови "}, {"type": "text", "text": "столицу."}]}], "Назови столицу."),
        ([{"role": "user", "content": [{"type": "text", "text": "Назови"}, {"type": "text"}]}], "Назови"),  # a part without text adds none
    ],
)
def test_a_conversation_is_the_instruction_and_input_the_model_was_trained_on(messages, source):
    assert chat_source(messages) == source


@pytest.mark.parametrize(
    "messages, message",
    [
        (None, "messages must be a non-empty list of {role, content} objects."),
        ([], "messages must be a non-empty list of {role, content} objects."),
        (["привет"], "Each message must be an object with a role (system, user) and its content."),
        ([{"role": "tool", "content": "x"}], "Each message must be an object with a role (system, user) and its content."),
        ([{"role": "user", "content": None}], "A message's content must be text."),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], "A message's content must be text."),
        ([{"role": "system", "content": "a"}], "The model answers one instruction"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "The model answers one instruction"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "The model answers one instruction"),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
            "The model answers one instruction",
        ),
    ],
)
def test_any_other_conversation_is_a_400_saying_what_to_send(messages, message):
    with pytest.raises(ApiError) as refused:
        chat_source(messages)
    assert (refused.value.status, refused.value.param) == (400, "messages") and refused.value.message.startswith(message)
    assert str(refused.value) == refused.value.message
    if message == "The model answers one instruction":
        assert refused.value.message == (
            "The model answers one instruction: send one user message (the instruction), or a system message (the instruction) "
            "and one user message (its input); it keeps no earlier turns."
        )
