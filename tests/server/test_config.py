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
        ({"MODEL_SERVER_HEALTH_PORT": "8080"}, "MODEL_SERVER_HEALTH_PORT=8080 is the same port as PORT"),
        (
            {"MODEL_SERVER_HEALTH_PORT": "8082", "MODEL_SERVER_WORKER_CLASS": "sync"},
            "MODEL_SERVER_HEALTH_PORT needs MODEL_SERVER_WORKER_CLASS=gevent",
        ),
        (
            {"MODEL_SERVER_MAX_INFLIGHT_BODY_BYTES": "2048", "MODEL_SERVER_MAX_BODY_BYTES": "4096"},
            "MODEL_SERVER_MAX_INFLIGHT_BODY_BYTES=2048 is less than MODEL_SERVER_MAX_BODY_BYTES=4096",
        ),
    ],
)
def test_bad_environment_values_are_named(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Settings.from_env(env)


def test_booleans_and_levels_are_case_insensitive():
    settings = Settings.from_env({"MODEL_SERVER_ACCESS_LOG": "OFF", "MODEL_SERVER_LOG_LEVEL": "DEBUG"})
    assert settings.access_log is False
    assert settings.log_level == "debug"


def test_settings_that_only_work_together_are_accepted_together():
    # Positive controls beside the refusals above: each pair is fine with the other value.
    settings = Settings.from_env(
        {
            "MODEL_SERVER_HEALTH_PORT": "8082",
            "MODEL_SERVER_MAX_INFLIGHT_BODY_BYTES": "4096",
            "MODEL_SERVER_MAX_BODY_BYTES": "4096",
        }
    )
    assert (settings.health_port, settings.max_inflight_body_bytes) == (8082, 4096)
    assert Settings.from_env({"MODEL_SERVER_WORKER_CLASS": "sync"}).health_port == 0
