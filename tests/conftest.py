"""Shared fixtures: a loopback OpenAI-compatible stub server (tests/llm_stub.py)."""
import pytest

from llm_stub import StubServer


@pytest.fixture
def make_llm_stub():
    """A factory of started stub servers, all stopped at the end of the test."""
    stubs = []

    def make() -> StubServer:
        stub = StubServer().start()
        stubs.append(stub)
        return stub

    yield make
    for stub in stubs:
        stub.stop()


@pytest.fixture
def llm_stub(make_llm_stub):
    """One started stub: `.url` (ends in /v1), `.requests`, `.reply(text)`, `.raw(status, body)`."""
    return make_llm_stub()
