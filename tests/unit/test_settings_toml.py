"""settings_toml writes what the demo and the tests built back as a sevisflow.toml that loads the same."""

from __future__ import annotations

import tomllib

from sevisflow.core.config import load_settings, settings_from_mapping, settings_toml


def test_settings_toml_round_trips_dotted_keys_quotes_and_types(tmp_path) -> None:
    raw = {
        "kafka": {"bootstrap_servers": "127.0.0.1:9092", "replication_factor": 3},
        "connector": {"topic.prefix": "sisab", "offsets_dir": 'C:\\dir "x"', "heartbeat.interval.ms": 500},
        "sevis": {"poll_interval_s": 1.5},
    }
    text = settings_toml(raw)
    assert tomllib.loads(text) == raw
    path = tmp_path / "sevisflow.toml"
    path.write_text(text)
    assert load_settings(path, env={}) == settings_from_mapping(raw, env={})
