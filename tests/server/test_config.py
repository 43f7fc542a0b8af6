from pathlib import Path

import pytest
from model_server.config import FIELDS, ConfigError, Settings


def test_defaults_are_documented_and_valid():
    settings = Settings.from_env({})
    assert settings.port == 8080
    assert settings.host == "127.0.0.1"
    assert settings.worker_class == "gevent"
    assert settings.model_dir == Path("/models/default")
    assert settings.access_log is True
    assert settings.trust_pickle is False
    assert all(field.doc for field in FIELDS.values())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "eighty"}, "PORT='eighty' is not a whole number"),
        ({"PORT": "70000"}, "PORT=70000 is out of range 1..65535"),
        ({"MODEL_SERVER_WORKERS": "0"}, "MODEL_SERVER_WORKERS=0 is out of range"),
        ({"MODEL_SERVER_ACCESS_LOG": "maybe"}, "MODEL_SERVER_ACCESS_LOG='maybe' is not a boolean"),
        ({"MODEL_SERVER_LOG_LEVEL": "loud"}, "MODEL_SERVER_LOG_LEVEL='loud' is not one of"),
        ({"MODEL_SERVER_MODEL_DIR": " "}, "MODEL_SERVER_MODEL_DIR is empty"),
    ],
)
def test_bad_environment_values_are_named(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Settings.from_env(env)


def test_booleans_and_levels_are_case_insensitive():
    settings = Settings.from_env({"MODEL_SERVER_ACCESS_LOG": "OFF", "MODEL_SERVER_LOG_LEVEL": "DEBUG"})
    assert settings.access_log is False
    assert settings.log_level == "debug"
