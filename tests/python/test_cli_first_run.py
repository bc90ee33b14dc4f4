"""A new user's first commands: --version, readable --help, the demo served as "mmcore-demo"."""

from __future__ import annotations

import re

import openai
import pytest

import mmcore
import mmcore.server
from mmcore.cli import main
from mmcore.demo import DEMO_MODEL_NAME, EXAMPLE_QUESTIONS, default_model_path

# reST/Sphinx markup that reads as noise in a terminal.
_REST = re.compile(r"``|:(func|class|mod|meth|attr|ref):`|\.\. \w+::")


def test_version_flag_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"mmcore {mmcore.__version__}"


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["serve", "--help"], ["generate", "--help"], ["info", "--help"]]
    + [["bench", "--help"], ["bench", "serve", "--help"], ["bench", "offline", "--help"]],
)
def test_help_texts_have_no_rest_markup(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: mmcore")
    assert not _REST.search(text), _REST.search(text).group(0)


def test_help_names_the_demo_model(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert DEMO_MODEL_NAME in capsys.readouterr().out


def _served_config(monkeypatch, argv):
    captured = {}
    monkeypatch.setattr(
        mmcore.server,
        "run_server",
        lambda engine, config, sock=None: captured.update(config=config),
    )
    assert main(argv) == 0
    return captured["config"]


def test_serve_without_a_model_names_the_demo_mmcore_demo(monkeypatch, tmp_path):
    assert _served_config(monkeypatch, ["serve"]).model_names == [DEMO_MODEL_NAME]
    assert _served_config(monkeypatch, ["serve", DEMO_MODEL_NAME]).model_names == [DEMO_MODEL_NAME]
    folder = str(tmp_path)
    assert _served_config(monkeypatch, ["serve", folder]).model_names == [folder]
    named = ["serve", "--served-model-name", "shapes"]
    assert _served_config(monkeypatch, named).model_names == ["shapes"]


def test_generate_accepts_the_short_name(capsys):
    from mmcore.demo import example_image_path

    question = "How many shapes are there?"
    argv = ["generate", "--model", DEMO_MODEL_NAME, "--image", str(example_image_path()), question]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == EXAMPLE_QUESTIONS[question]


def test_served_demo_lists_and_answers_as_mmcore_demo(monkeypatch):
    from server_fixtures import data_url, image_part, user

    from mmcore import Engine
    from mmcore.demo import example_image_path

    config = _served_config(monkeypatch, ["serve", "--log-level", "warning"])
    with mmcore.server.BackgroundServer(Engine(str(default_model_path())), config) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == [DEMO_MODEL_NAME]
        picture = image_part(data_url(example_image_path().read_bytes()))
        question = "What colour is the star?"
        reply = client.chat.completions.create(
            model=DEMO_MODEL_NAME, messages=user(picture, question), temperature=0.0, max_tokens=8
        )
        assert reply.choices[0].message.content.strip() == EXAMPLE_QUESTIONS[question]
        assert reply.model == DEMO_MODEL_NAME
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model=str(default_model_path()), messages=user(picture, question), max_tokens=2
            )
