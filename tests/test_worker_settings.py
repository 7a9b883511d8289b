"""The worker's settings from its environment: every mistake named in one clear error."""

from __future__ import annotations

import pytest

from worker.settings import SettingsError, WorkerSettings

BASE = {"SESSIONS_TABLE": "t", "CONNECTIONS_ENDPOINT_URL": "https://x"}


def test_slot_queues_in_order_and_the_drain_and_lease_settings() -> None:
    settings = WorkerSettings.from_env(
        {
            **BASE,
            "AUDIO_QUEUE_URLS": "q0, q1,q2",
            "DRAIN_WAIT_SECONDS": "30",
            "SLOT_TICK_SECONDS": "0.5",
            "SLOT_LEASE_SECONDS": "3",
            "MODEL_SESSION_MAX_SECONDS": "600",
            "WORKER_ID": "w-1",
        }
    )
    assert settings.queue_urls == ("q0", "q1", "q2")
    assert (settings.drain_wait_ms, settings.lease_tick_ms, settings.lease_ms) == (
        30_000,
        500,
        3000,
    )
    assert settings.bridge.model_session_max_ms == 600_000
    assert settings.worker_id == "w-1"


def test_a_single_queue_url_is_one_slot_and_worker_ids_are_unique() -> None:
    first = WorkerSettings.from_env({**BASE, "AUDIO_QUEUE_URL": "q"})
    second = WorkerSettings.from_env({**BASE, "AUDIO_QUEUE_URL": "q"})
    assert first.queue_urls == ("q",)
    assert first.worker_id != second.worker_id


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "AUDIO_QUEUE_URLS is not set"),
        ({"AUDIO_QUEUE_URLS": "a,,b"}, "empty entry"),
        ({"AUDIO_QUEUE_URLS": "a", "SLOT_TICK_SECONDS": "x"}, "SLOT_TICK_SECONDS must be a number"),
        ({"AUDIO_QUEUE_URLS": "a", "SLOT_TICK_SECONDS": "-1"}, "must be positive"),
        (
            {"AUDIO_QUEUE_URLS": "a", "SLOT_TICK_SECONDS": "5", "SLOT_LEASE_SECONDS": "6"},
            "at least twice",
        ),
        ({"AUDIO_QUEUE_URLS": "a", "MODEL_SESSION_MAX_SECONDS": "4000"}, "MODEL_SESSION_MAX"),
        ({"AUDIO_QUEUE_URLS": "a", "DRAIN_WAIT_SECONDS": "soon"}, "DRAIN_WAIT_SECONDS"),
    ],
)
def test_bad_settings_are_named(extra: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        WorkerSettings.from_env({**BASE, **extra})
