"""Opt-in (``pytest -m ray``): `pyengine serve` as a Ray Serve app with 2 replicas on 127.0.0.1."""
from __future__ import annotations

import socket

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_server(request):
    if "ray" not in (request.config.getoption("-m") or ""):
        pytest.skip("opt-in: run with pytest -m ray")
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from conftest import real_model_path
    from pyengine.server.ray_serve import deployment

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=4, include_dashboard=False, ignore_reinit_error=True)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(deployment(str(real_model_path("smollm2-135m")), replicas=2, n_ctx=256, parallel=2,
                         name="smollm2-135m", num_cpus=1), route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def test_two_replicas_answer_through_the_openai_client(ray_server):
    import openai

    client = openai.OpenAI(base_url=ray_server + "/v1", api_key="unused", timeout=120, max_retries=0)
    assert [m.id for m in client.models.list()] == ["smollm2-135m"]
    replicas, texts = set(), set()
    for i in range(12):
        raw = client.chat.completions.with_raw_response.create(
            model="smollm2-135m", messages=[{"role": "user", "content": "Say hi"}], max_tokens=6, temperature=0)
        replicas.add(raw.headers["x-pyengine-replica"])
        texts.add(raw.parse().choices[0].message.content)
        if len(replicas) == 2 and i >= 3:
            break
    assert len(replicas) == 2, replicas
    assert len(texts) == 1  # same model, greedy: the same answer from both
    stream = client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "Say hi"}],
                                            max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == texts.pop()
