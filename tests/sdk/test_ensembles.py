"""Ensembles through the official SDK: defined with `client.post("/ensembles")` (an extension),
then chatted with by model name; the report arrives as an extra field the SDK keeps."""
import openai
import pytest

from conftest import QA


def test_an_ensemble_answers_by_model_name(strict, fine_tuned):
    model = fine_tuned.fine_tuned_model
    question, answer = QA[0]
    created = strict.post("/ensembles", cast_to=object, body={
        "name": "sdk-pair", "members": [model, "ferrotune-tiny"], "strategy": "best_logprob"})
    assert created["object"] == "ensemble" and created["members"] == [model, "ferrotune-tiny"]
    assert "sdk-pair" in [m.id for m in strict.models.list()]
    msgs = [{"role": "user", "content": question}]
    r = strict.chat.completions.create(model="sdk-pair", messages=msgs, temperature=0, max_tokens=40)
    assert r.model == "sdk-pair"
    assert r.choices[0].message.content == answer
    report = r.model_extra["ensemble"]
    assert report["winner"] == model
    assert [a["model"] for a in report["answers"]] == [model, "ferrotune-tiny"]
    stream = strict.chat.completions.create(model="sdk-pair", messages=msgs, temperature=0,
                                            max_tokens=40, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answer
    with pytest.raises(openai.BadRequestError) as e:
        strict.post("/ensembles", cast_to=object, body={"name": "sdk-bad", "members": [model, "nope"]})
    assert e.value.body["param"] == "members[1]"
    with pytest.raises(openai.BadRequestError) as e:
        strict.chat.completions.create(model="sdk-pair", messages=msgs, n=2)
    assert e.value.body["param"] == "n"
    strict.delete("/ensembles/sdk-pair", cast_to=object)
    with pytest.raises(openai.NotFoundError):
        strict.chat.completions.create(model="sdk-pair", messages=msgs)
