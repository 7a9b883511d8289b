"""Worker slots: placement (wire/slots.py), the lease plan and leases in DynamoDB
(worker/slot_leases.py, against moto), and the authorizer and handlers routing by slot."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.aws_local import handler_env, load_handlers, moto_server
from wire import slots
from wire import token as tokens
from wire.queue import RECEIVE_ATTRIBUTES, QueueEnvelope
from worker.slot_leases import LeasePlan, SlotLeases, plan_leases

NOW = 1_800_000_000_000
LATER = NOW + 10_000


def held(slot: int, owner: str, sessions: int = 0, *, until: int = LATER, draining: bool = False):
    return slots.SlotState(slot, owner, until, draining, sessions)


# --- placement ---------------------------------------------------------------------------


def test_calls_go_mostly_to_the_least_loaded_live_slot() -> None:
    states = [held(0, "a", 8), held(1, "b", 0), held(2, "a", 6)]
    rng = random.Random(1)
    chosen = [slots.choose_slot(states, NOW, rng) for _ in range(1000)]
    assert chosen.count(1) > chosen.count(2) > chosen.count(0) > 0
    # Weights 1 : 9 : 3 (most sessions - sessions + 1).
    assert 0.6 < chosen.count(1) / 1000 < 0.78


def test_draining_and_expired_slots_take_no_new_calls() -> None:
    states = [
        held(0, "a", 0, draining=True),
        held(1, "b", 0, until=NOW - 1),
        slots.SlotState(2),  # never leased
        held(3, "c", 9),
    ]
    assert {slots.choose_slot(states, NOW, random.Random(s)) for s in range(50)} == {3}


def test_with_no_live_slot_every_slot_is_a_candidate() -> None:
    states = [slots.SlotState(0, sessions=4), slots.SlotState(1, sessions=1)]
    chosen = [slots.choose_slot(states, NOW, random.Random(s)) for s in range(200)]
    assert chosen.count(1) > chosen.count(0) > 0


def test_ties_are_spread_at_random() -> None:
    states = [held(i, "w", 0) for i in range(4)]
    chosen = {slots.choose_slot(states, NOW, random.Random(seed)) for seed in range(50)}
    assert chosen == {0, 1, 2, 3}


def test_the_slot_in_the_authorizer_context_is_read_defensively() -> None:
    assert slots.slot_of({"authorizer": {"slot": "2"}}, 4) == 2
    assert slots.slot_of({"authorizer": {"slot": 2}}, 4) == 2
    for bad in (
        {},
        {"authorizer": None},
        {"authorizer": {"slot": "x"}},
        {"authorizer": {"slot": "9"}},
    ):
        assert slots.slot_of(bad, 4) == 0


def test_queue_urls_come_from_either_variable() -> None:
    assert slots.queue_urls_from_env({"AUDIO_QUEUE_URLS": "a, b"}) == ("a", "b")
    assert slots.queue_urls_from_env({"AUDIO_QUEUE_URL": "a"}) == ("a",)
    assert slots.queue_urls_from_env({}) == ()
    with pytest.raises(ValueError, match="empty entry"):
        slots.queue_urls_from_env({"AUDIO_QUEUE_URLS": "a,,b"})


# --- the lease plan -----------------------------------------------------------------------


def test_a_lone_worker_claims_every_free_slot() -> None:
    plan = plan_leases([slots.SlotState(i) for i in range(4)], {}, "me", NOW)
    assert sorted(plan.claim) == [0, 1, 2, 3] and plan.release == ()


def test_workers_claim_their_share_only() -> None:
    states = [slots.SlotState(i) for i in range(4)]
    plan = plan_leases(states, {"me": LATER, "other": LATER}, "me", NOW)
    assert len(plan.claim) == 2


def test_a_dead_workers_slots_are_claimed_after_its_lease_runs_out() -> None:
    states = [held(0, "me"), held(1, "dead", until=NOW - 1)]
    plan = plan_leases(states, {"me": LATER, "dead": NOW - 1}, "me", NOW)
    assert plan.claim == (1,)


def test_the_busiest_worker_gives_one_slot_to_a_newcomer() -> None:
    states = [held(i, "old", sessions=i) for i in range(4)]
    alive = {"old": LATER, "new": LATER}
    assert plan_leases(states, alive, "old", NOW) == LeasePlan(release=(0,))
    assert plan_leases(states, alive, "new", NOW) == LeasePlan()  # it waits for the release


def test_a_balanced_spread_is_left_alone() -> None:
    states = [held(0, "a"), held(1, "a"), held(2, "b")]
    assert plan_leases(states, {"a": LATER, "b": LATER}, "a", NOW) == LeasePlan()


@given(
    owners=st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=12),
    workers=st.sets(st.sampled_from(["a", "b", "c"]), min_size=1),
)
def test_plans_converge_to_an_even_spread(owners: list[str | None], workers: set[str]) -> None:
    """Every worker in turn applies its plan (releases then claims) until nothing changes:
    every slot ends up held, and no worker holds two more than another."""
    state = {i: (o if o in workers else None) for i, o in enumerate(owners)}
    alive = {w: LATER for w in workers}
    for _ in range(4 * len(owners) + 4):
        changed = False
        for worker in sorted(workers):
            current = [slots.SlotState(i, o, LATER if o else 0) for i, o in state.items()]
            plan = plan_leases(current, alive, worker, NOW, rng=random.Random(0))
            for slot in plan.release:
                state[slot], changed = None, True
            for slot in plan.claim:
                if state[slot] is None:
                    state[slot], changed = worker, True
        if not changed:
            break
    assert all(owner is not None for owner in state.values())
    counts = [sum(1 for o in state.values() if o == w) for w in workers]
    assert max(counts) - min(counts) <= 1


# --- leases in DynamoDB (moto server) -------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[object]:
    with moto_server() as stack:
        yield stack


def leases_for(moto, worker: str, slot_count: int = 2, lease_ms: int = 5_000) -> SlotLeases:
    return SlotLeases(
        moto.dynamodb,
        moto.resources.table_name,
        slot_count,
        worker,
        ThreadPoolExecutor(2),
        lease_ms=lease_ms,
    )


def test_only_one_worker_wins_a_slot_and_the_loser_cannot_renew_it(moto) -> None:
    a, b = leases_for(moto, "worker-a"), leases_for(moto, "worker-b")

    async def scenario() -> None:
        now = int(time.time() * 1000)
        assert await a.claim(0, now)
        assert not await b.claim(0, now)
        await a.renew(0, now, sessions=3, draining=False)
        with pytest.raises(Exception, match="0"):
            await b.renew(0, now, sessions=0, draining=False)
        states, _ = await a.read()
        assert states[0].owner == "worker-a" and states[0].sessions == 3
        await a.release(0)
        states, _ = await b.read()
        assert not states[0].live(now)
        assert await b.claim(0, now)  # released: anyone may take it

    asyncio.run(scenario())


def test_an_expired_lease_can_be_taken(moto) -> None:
    a, b = leases_for(moto, "worker-a", lease_ms=1), leases_for(moto, "worker-b")

    async def scenario() -> None:
        now = int(time.time() * 1000)
        assert await a.claim(1, now)
        assert await b.claim(1, now + 5)

    asyncio.run(scenario())


def test_the_registry_lists_live_workers_and_forgets_leavers(moto) -> None:
    a, b = leases_for(moto, "reg-a"), leases_for(moto, "reg-b")

    async def scenario() -> None:
        now = int(time.time() * 1000)
        await a.announce(now)
        await b.announce(now)
        _, alive = await a.read()
        assert {"reg-a", "reg-b"} <= set(alive)
        await b.announce(now, present=False)
        await a.announce(now, forget=["reg-gone"])
        _, alive = await a.read()
        assert "reg-b" not in alive and "reg-a" in alive

    asyncio.run(scenario())


# --- the authorizer places, the handlers route -----------------------------------------------


@pytest.fixture(scope="module")
def three_slots(moto) -> Iterator[tuple[dict, list[str], object]]:
    urls = [
        moto.sqs.create_queue(
            QueueName=f"slot-test-{i}.fifo",
            Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "false"},
        )["QueueUrl"]
        for i in range(3)
    ]
    sm = moto.client("secretsmanager")
    arn = sm.create_secret(Name="slot-test-key", SecretString="k")["ARN"]
    env = {
        "AUTH_SECRET_ARN": arn,
        "TOKEN_AUDIENCE": tokens.audience_for("test"),
        "AUDIO_QUEUE_URLS": ",".join(urls),
        "WORKER_SLOTS": "3",
        "AUDIO_QUEUE_URL": "",
    }
    with handler_env(moto, **env):
        modules = load_handlers()
    yield modules, urls, moto


def test_the_authorizer_places_on_live_slots_by_load_and_counts_each_call(three_slots) -> None:
    modules, urls, moto = three_slots
    now = int(time.time() * 1000)
    table = moto.resources.table_name
    for slot, sessions in ((0, 4), (1, 1), (2, 0)):
        moto.dynamodb.put_item(
            TableName=table,
            Item={
                "connectionId": {"S": slots.slot_key(slot)},
                "owner": {"S": "w"},
                "leaseUntilMs": {"N": str(now + 60_000)},
                "draining": {"BOOL": slot == 2},  # the emptiest is draining: not chosen
                "sessions": {"N": str(sessions)},
            },
        )
    event = {
        "type": "REQUEST",
        "methodArn": "arn:aws:execute-api:us-east-1:0:api/live/$connect",
        "headers": {},
        "queryStringParameters": {"token": tokens.mint(b"k", tokens.audience_for("test"))},
        "requestContext": {"routeKey": "$connect", "connectionId": "c1=", "requestId": "r1"},
    }
    placed = []
    random.seed(3)  # the authorizer draws from the module-level generator
    for _ in range(6):
        result = modules["authorize"].handler(event, SimpleNamespace(aws_request_id="x"))
        slot = int(result["context"]["slot"])
        assert result["context"]["queueUrl"] == urls[slot]
        placed.append(slot)
    assert 2 not in placed  # draining
    assert placed.count(1) >= placed.count(0)
    counts = [
        int(
            moto.dynamodb.get_item(TableName=table, Key={"connectionId": {"S": slots.slot_key(i)}})[
                "Item"
            ]["sessions"]["N"]
        )
        for i in range(2)
    ]
    # Each placement is counted at once, before the worker's next heartbeat.
    assert counts == [4 + placed.count(0), 1 + placed.count(1)]


def test_every_route_of_a_connection_uses_its_slots_queue(three_slots) -> None:
    modules, urls, moto = three_slots
    ctx = {
        "connectionId": "c2=",
        "requestId": "r-open",
        "requestTimeEpoch": 1,
        "authorizer": {"slot": "2", "queueUrl": urls[2]},
        "identity": {"sourceIp": "1.2.3.4", "userAgent": "t"},
    }
    lambda_context = SimpleNamespace(aws_request_id="x")
    modules["connect"].handler({"requestContext": ctx}, lambda_context)
    modules["default"].handler(
        {"requestContext": {**ctx, "requestId": "r-frame"}, "body": "{}"}, lambda_context
    )
    modules["disconnect"].handler(
        {"requestContext": {**ctx, "requestId": "r-close"}}, lambda_context
    )
    received = []
    for _ in range(3):
        response = moto.sqs.receive_message(
            QueueUrl=urls[2], MaxNumberOfMessages=10, WaitTimeSeconds=0, **RECEIVE_ATTRIBUTES
        )
        for message in response.get("Messages", []):
            received.append(QueueEnvelope.from_message(message).kind.value)
            moto.sqs.delete_message(QueueUrl=urls[2], ReceiptHandle=message["ReceiptHandle"])
    assert received == ["open", "frame", "close"]
    for other in urls[:2]:
        response = moto.sqs.receive_message(QueueUrl=other, WaitTimeSeconds=0)
        assert not response.get("Messages")
