"""The producer side: one round trip per enqueue, RQ's layout (its fields and values, less those
it writes empty), explicit ids that are refused or replaced atomically, reserved ids,
dependencies, enqueue_many in chunks."""

from __future__ import annotations

import json
import os
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.job import Retry as RQRetry
from rq.serializers import JSONSerializer

from atomq import Retry
from atomq.core import keys
from atomq.core.errors import DuplicateJobError, InvalidJobOptionError, JobNotFoundError, JobStateError
from atomq.core.options import DerivedJobId, reserved_for
from atomq.engine import script_calls
from atomq.engine import task_queue as task_queue_module
from atomq.engine.batches import item_job_id
from atomq.engine.producer_scripts import CANCEL_SCRIPT, ENQUEUE_ONE_SCRIPT, ENQUEUE_SCRIPT
from atomq.engine.script_calls import Script, call_script, call_scripts
from atomq.features.posts.jobs import job_id_for
from atomq.features.recurring.schedules import Schedule
from atomq.features.workflows.service import step_job_id

pytestmark = pytest.mark.timeout(60)

#: What RQ reads from the fields it writes empty for a job that has not run.
UNSET_ATTRIBUTES = (
    "success_callback",
    "failure_callback",
    "stopped_callback",
    "started_at",
    "ended_at",
    "last_heartbeat",
    "worker_name",
    "group_id",
)

#: Fields whose values differ between two jobs made at different moments or with jitter.
MOMENT_FIELDS = {"created_at", "enqueued_at", "data", "retry_intervals"}


def round_trips(connection, action):
    """Run ``action``; return (its result, requests Redis read meanwhile, commands it ran)."""
    for script in (ENQUEUE_SCRIPT, ENQUEUE_ONE_SCRIPT):
        connection.script_load(script.source)  # as after any earlier enqueue
    # Scripts keep a connection of their own; INFO then needs a second: both open beforehand.
    call_script(connection, CANCEL_SCRIPT, ["warm-up", 0])
    connection.info("stats")
    before = connection.info("stats")
    result = action()
    after = connection.info("stats")
    # The second INFO is a read and a command of its own.
    return (
        result,
        after["total_reads_processed"] - before["total_reads_processed"] - 1,
        after["total_commands_processed"] - before["total_commands_processed"] - 1,
    )


def text_hash(connection, job_id):
    return {k.decode(): v for k, v in connection.hgetall(keys.job_key(job_id)).items()}


def defaults(tq, timeout="timeout"):
    """The options atomq gives a job by default, for RQ to give its own the same (RQ's
    ``enqueue_at`` calls the timeout ``job_timeout``)."""
    s = tq.settings
    return {timeout: s.default_timeout, "result_ttl": s.result_ttl, "failure_ttl": s.failure_ttl}


def rq_queue(connection, name="default"):
    return Queue(name, connection=connection, serializer=JSONSerializer)


def assert_same_layout(atomq_hash, rq_hash, *, extra=()):
    """atomq's hash has RQ's fields with RQ's values, less those RQ writes empty (its reader
    takes a missing field for an empty one)."""
    written = {name for name, value in rq_hash.items() if value != b""}
    assert set(atomq_hash) - set(extra) == written, (
        sorted(set(atomq_hash) ^ written),
        atomq_hash,
        rq_hash,
    )
    for name, value in rq_hash.items():
        if name not in MOMENT_FIELDS:
            assert atomq_hash.get(name, b"") == value, name
    for stamp in ("created_at", "enqueued_at"):
        if stamp in rq_hash:
            assert datetime.strptime(atomq_hash[stamp].decode(), "%Y-%m-%dT%H:%M:%S.%fZ")
    assert as_rq_reads(atomq_hash["data"]) == zlib.decompress(rq_hash["data"])


def as_rq_reads(raw):
    """A stored payload as ``Job.restore`` takes it: decompressed, or raw when that fails."""
    try:
        return zlib.decompress(raw)
    except zlib.error:
        return raw


@pytest.mark.parametrize(
    ("atomq_options", "rq_options"),
    [
        ({}, {}),
        (
            {"timeout": 30, "result_ttl": 60, "failure_ttl": 120, "ttl": 300, "description": "hello"},
            {"timeout": 30, "result_ttl": 60, "failure_ttl": 120, "ttl": 300, "description": "hello"},
        ),
        (
            {"meta": {"who": "me", "n": [1, 2]}, "retry": Retry(max=2, delay=5, jitter=0)},
            {
                "meta": {"who": "me", "n": [1, 2]},
                "retry": RQRetry(max=2, interval=[5, 10]),
            },
        ),
    ],
)
def test_a_queued_job_has_rqs_layout_and_costs_one_round_trip(tq, connection, atomq_options, rq_options):
    job, reads, _ = round_trips(
        connection, lambda: tq.enqueue("add", kwargs={"a": 1, "b": 2}, job_id="mine-1", **atomq_options)
    )
    assert reads == 1
    rq_job = rq_queue(connection).enqueue_call(
        "add", kwargs={"a": 1, "b": 2}, job_id="theirs-1", **(defaults(tq) | rq_options)
    )
    assert_same_layout(text_hash(connection, job.id), text_hash(connection, rq_job.id))
    assert connection.lrange(keys.queue_key("default"), 0, -1) == [b"mine-1", b"theirs-1"]
    assert connection.smembers(keys.QUEUES_SET) == {keys.queue_key("default").encode()}
    assert connection.lrange(keys.wake_key("default"), 0, -1) == [b"1"]
    if "ttl" in atomq_options:
        assert 0 < connection.ttl(keys.job_key(job.id)) <= 300
    fetched = Job.fetch(job.id, connection=connection, serializer=JSONSerializer)
    assert (fetched.func_name, fetched.kwargs, fetched.origin) == ("add", {"a": 1, "b": 2}, "default")
    # The fields RQ writes empty and atomq leaves out read the same.
    theirs = Job.fetch(rq_job.id, connection=connection, serializer=JSONSerializer)
    for name in UNSET_ATTRIBUTES:
        assert getattr(fetched, name) == getattr(theirs, name), name
    assert fetched.get_status() == JobStatus.QUEUED
    assert fetched.meta == atomq_options.get("meta", {})
    assert (job.id, job.origin, job.get_status(refresh=False)) == ("mine-1", "default", JobStatus.QUEUED)


def test_a_scheduled_job_has_rqs_layout_exact_due_time_and_one_round_trip(tq, connection):
    due = datetime.now(UTC) + timedelta(minutes=5, milliseconds=250)
    job, reads, _ = round_trips(
        connection, lambda: tq.enqueue_at(due, "add", a=1, b=2, at_front=True, job_id="later-1")
    )
    assert reads == 1
    rq_job = rq_queue(connection).enqueue_at(
        due, "add", a=1, b=2, at_front=True, job_id="rq-later", **defaults(tq, "job_timeout")
    )
    assert_same_layout(
        text_hash(connection, job.id), text_hash(connection, rq_job.id), extra={"atomq_due_at"}
    )
    assert connection.zscore(keys.scheduled_key("default"), job.id) == pytest.approx(
        due.timestamp(), abs=1e-6
    )
    assert float(connection.hget(keys.job_key(job.id), "atomq_due_at")) == pytest.approx(due.timestamp())
    assert connection.lrange(keys.SCHEDULER_WAKE, 0, -1) == [b"1"]
    assert connection.llen(keys.queue_key("default")) == 0
    assert job.get_status(refresh=False) == JobStatus.SCHEDULED


def test_enqueues_top_up_the_wake_tokens_to_sixteen_and_no_further(tq, connection):
    # A token wakes one idle worker; a full list means no worker is waiting on it.
    wake = keys.wake_key("default")
    for i in range(20):
        tq.enqueue("add", a=i, b=1)
    assert connection.llen(wake) == 16
    connection.lpop(wake, 3)  # three workers woke
    tq.enqueue("add", a=1, b=1)
    assert connection.llen(wake) == 14
    tq.enqueue_many([("add", {"a": i, "b": 1}) for i in range(5)])
    assert connection.llen(wake) == 16
    tq.enqueue_in(60, "add", a=1, b=1)
    for _ in range(20):
        tq.enqueue_at(datetime.now(UTC) + timedelta(minutes=1), "add", a=1, b=1)
    assert connection.llen(keys.SCHEDULER_WAKE) == 16


def test_a_job_waiting_for_another_is_deferred_in_rqs_layout(tq, connection):
    first = tq.enqueue("add", a=1, b=1)
    job, reads, _ = round_trips(
        connection, lambda: tq.enqueue("add", a=2, b=2, depends_on=first, job_id="then")
    )
    assert reads == 1
    assert tq.get_job_status(job.id)["status"] == "deferred"
    rq_job = rq_queue(connection).enqueue_call(
        "add", kwargs={"a": 2, "b": 2}, depends_on=first.id, job_id="rq-then", **defaults(tq)
    )
    assert_same_layout(text_hash(connection, job.id), text_hash(connection, rq_job.id))
    assert connection.smembers(keys.dependents_key(first.id)) == {b"then", b"rq-then"}
    assert connection.smembers(keys.dependencies_key("then")) == {first.id.encode()}
    assert connection.smembers(Job(id="then", connection=connection).dependencies_key) == {first.id.encode()}
    assert set(connection.zrange(keys.deferred_key("default"), 0, -1)) == {b"then", b"rq-then"}
    assert connection.lrange(keys.queue_key("default"), 0, -1) == [first.id.encode()]


def test_dependencies_run_in_order_and_a_finished_one_queues_at_once(tq, connection, burst):
    first = tq.enqueue("add", a=1, b=1)
    second = tq.enqueue("add", a=2, b=2, depends_on=[first.id])
    burst()  # runs the first; its end queues the second
    assert tq.get_job_status(second.id)["status"] == "queued"
    burst()
    assert tq.get_job_status(second.id)["result"] == 4
    third = tq.enqueue("add", a=3, b=3, depends_on=first.id)
    assert third.get_status(refresh=False) == JobStatus.QUEUED
    assert tq.get_job_status(third.id)["status"] == "queued"
    assert connection.hget(keys.job_key(third.id), "enqueued_at")


def test_an_unknown_dependency_is_refused_and_nothing_is_written(tq, connection):
    with pytest.raises(JobNotFoundError) as caught:
        tq.enqueue("add", a=1, b=1, depends_on=["nope"], job_id="orphan")
    assert caught.value.field == "depends_on"
    assert "nope" in caught.value.message
    assert not connection.exists(keys.job_key("orphan"))
    assert connection.dbsize() == 0


def test_an_existing_id_is_refused_atomically_and_the_old_job_is_untouched(tq, connection):
    tq.enqueue("add", a=1, b=1, job_id="taken")
    before = text_hash(connection, "taken")
    for attempt in (
        lambda: tq.enqueue("echo", value="x", job_id="taken"),
        lambda: tq.enqueue_in(60, "echo", value="x", job_id="taken"),
        lambda: tq.enqueue("echo", value="x", job_id="taken", unique=True),
    ):
        with pytest.raises(DuplicateJobError) as caught:
            attempt()
        assert caught.value.field == "job_id"
        assert "replace=True" in caught.value.message
    assert text_hash(connection, "taken") == before
    assert connection.lrange(keys.queue_key("default"), 0, -1) == [b"taken"]
    assert connection.llen(keys.queue_key("high_priority")) == 0


def test_replace_puts_a_new_job_in_place_of_the_old_one(tq, connection, burst):
    old = tq.enqueue("add", a=1, b=1, job_id="again", meta={"old": True})
    burst()
    assert tq.get_job_status(old.id)["result"] == 2
    assert connection.exists(keys.results_key("again"))
    new, reads, _ = round_trips(
        connection, lambda: tq.enqueue("echo", value="new", job_id="again", replace=True)
    )
    assert reads == 1
    stored = text_hash(connection, "again")
    assert stored[b"origin".decode()] == b"high_priority"
    assert not {"meta", "started_at", "ended_at", "worker_name"} & set(stored), "nothing of the old run"
    assert stored["status"] == b"queued"
    assert not connection.exists(keys.results_key("again")), "the old run's results went with it"
    assert connection.zscore(keys.finished_key("default"), "again") is None
    assert connection.lrange(keys.queue_key("high_priority"), 0, -1) == [b"again"]
    burst()
    assert tq.get_job_status(new.id)["result"] == "new"


def test_replace_takes_a_waiting_job_off_its_queue_and_schedule(tq, connection):
    tq.enqueue("add", a=1, b=1, job_id="moved")
    tq.enqueue_in(3600, "add", a=1, b=1, job_id="planned")
    tq.enqueue_in(60, "echo", value=1, job_id="moved", replace=True)
    tq.enqueue("echo", value=2, job_id="planned", replace=True)
    assert connection.llen(keys.queue_key("default")) == 0
    assert connection.zcard(keys.scheduled_key("default")) == 0
    assert connection.zrange(keys.scheduled_key("high_priority"), 0, -1) == [b"moved"]
    assert connection.lrange(keys.queue_key("high_priority"), 0, -1) == [b"planned"]


def test_a_running_job_cannot_be_replaced(tq, connection):
    tq.enqueue("add", a=1, b=1, job_id="busy")
    connection.hset(keys.job_key("busy"), "status", "started")
    with pytest.raises(JobStateError, match="running"):
        tq.enqueue("add", a=2, b=2, job_id="busy", replace=True)
    assert connection.hget(keys.job_key("busy"), "status") == b"started"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"replace": True}, "replace"),
        ({"unique": True}, "unique"),
        ({"job_id": "x", "unique": True, "replace": True}, "replace"),
    ],
)
def test_replace_and_unique_need_an_id_and_exclude_each_other(tq, connection, options, field):
    with pytest.raises(InvalidJobOptionError) as caught:
        tq.enqueue("add", a=1, b=1, **options)
    assert caught.value.field == field
    assert connection.dbsize() == 0


def derived_ids():
    hex32 = uuid.uuid4().hex
    return {
        "scheduled posts": [job_id_for(f"post_{hex32}", 3), job_id_for(f"post_{hex32}", 12, resume_after=2)],
        "workflow steps": [step_job_id(f"wfr_{hex32}", "fetch-data", 1)],
        "batch items": [item_job_id(f"batch_{hex32}", 0), item_job_id(f"batch_{hex32}", 99)],
        "recurring schedules": [Schedule(name="nightly", task="ping", every=60).job_id(1_700_000_000.25)],
    }


def test_the_ids_atomq_derives_have_the_reserved_forms():
    for owner, ids in derived_ids().items():
        for job_id in ids:
            assert reserved_for(job_id) == owner, job_id
    for free in ("post_123", "post-1-r2", "my-batch-1", "wfr_short-a-1", "order-42", "batch_"):
        assert reserved_for(free) is None, free


def test_callers_cannot_take_a_reserved_id_but_atomq_can(tq, connection):
    for ids in derived_ids().values():
        for job_id in ids:
            with pytest.raises(InvalidJobOptionError) as caught:
                tq.enqueue("add", a=1, b=1, job_id=job_id, replace=True)
            assert caught.value.field == "job_id"
            assert "choose another id" in caught.value.message
    assert connection.dbsize() == 0
    post_job = job_id_for(f"post_{uuid.uuid4().hex}", 1)
    job = tq.enqueue("add", a=1, b=1, job_id=DerivedJobId(post_job), unique=True)
    assert job.id == post_job and type(job.id) is str
    assert connection.exists(keys.job_key(post_job))


def test_enqueue_many_writes_in_chunks_with_dependencies_inside_the_list(tq, connection, monkeypatch):
    monkeypatch.setattr(task_queue_module, "MANY_CHUNK", 10)
    calls = [("add", {"a": i, "b": i}) for i in range(25)]
    calls.append({"task": "add", "kwargs": {"a": 0, "b": 0}, "job_id": "last", "depends_on": ["first"]})
    calls.insert(0, {"task": "add", "kwargs": {"a": 0, "b": 0}, "job_id": "first"})
    jobs, reads, _ = round_trips(connection, lambda: tq.enqueue_many(calls))
    assert reads == 3
    assert len(jobs) == 27 and connection.llen(keys.queue_key("default")) == 26
    assert jobs[-1].get_status(refresh=False) == JobStatus.DEFERRED
    assert connection.smembers(keys.dependents_key("first")) == {b"last"}


def test_enqueue_many_refuses_a_chunk_whole_and_says_what_was_queued(tq, connection, monkeypatch):
    monkeypatch.setattr(task_queue_module, "MANY_CHUNK", 10)
    tq.enqueue("add", a=1, b=1, job_id="exists")
    calls = [("add", {"a": i, "b": i}) for i in range(15)]
    calls[12] = {"task": "add", "kwargs": {"a": 1, "b": 1}, "job_id": "exists"}
    with pytest.raises(DuplicateJobError) as caught:
        tq.enqueue_many(calls)
    assert "calls 0-9 were queued" in caught.value.message
    assert connection.llen(keys.queue_key("default")) == 11

    connection.flushall()
    with pytest.raises(InvalidJobOptionError, match="more than once"):
        tq.enqueue_many([{"task": "add", "kwargs": {"a": 1, "b": 1}, "job_id": "twice"}] * 2)
    assert connection.dbsize() == 0


def test_cancel_takes_waiting_jobs_back_in_one_step(tq, connection):
    queued = tq.enqueue("add", a=1, b=1)
    scheduled = tq.enqueue_in(600, "add", a=1, b=1)
    deferred = tq.enqueue("add", a=1, b=1, depends_on=scheduled)
    for job in (queued, scheduled, deferred):
        assert tq.cancel_job(job.id)["status"] == "canceled"
        assert connection.zscore(keys.canceled_key("default"), job.id) is not None
        with pytest.raises(JobStateError):
            tq.cancel_job(job.id)
    assert connection.llen(keys.queue_key("default")) == 0
    assert connection.zcard(keys.scheduled_key("default")) == 0
    assert connection.zcard(keys.deferred_key("default")) == 0
    assert (
        Job.fetch(queued.id, connection=connection, serializer=JSONSerializer).get_status()
        == JobStatus.CANCELED
    )
    with pytest.raises(JobNotFoundError):
        tq.cancel_job("no-such-job")


def test_the_payload_round_trips_through_rqs_reader(tq, connection):
    value = {"text": "héllo ✓", "list": [1, 2.5, None, True], "nested": {"k": "v"}}
    job = tq.enqueue("echo", value=value)
    raw = connection.hget(keys.job_key(job.id), "data")
    assert json.loads(raw) == ["echo", None, [], {"value": value}]  # small: stored as JSON text
    fetched = Job.fetch(job.id, connection=connection, serializer=JSONSerializer)
    assert fetched.kwargs == {"value": value}
    rq_job = rq_queue(connection, "high_priority").enqueue_call("echo", kwargs={"value": value})
    assert fetched.description == rq_job.description


def test_a_large_payload_is_stored_compressed_and_rq_reads_both_forms(tq, connection):
    small = tq.enqueue("echo", value="x")
    large = tq.enqueue("echo", value="word " * 400)
    stored = {job.id: connection.hget(keys.job_key(job.id), "data") for job in (small, large)}
    assert stored[small.id].startswith(b"[")
    assert len(stored[large.id]) < 2000 < len(json.dumps("word " * 400))
    assert json.loads(zlib.decompress(stored[large.id]))[3] == {"value": "word " * 400}
    for job, value in ((small, "x"), (large, "word " * 400)):
        fetched = Job.fetch(job.id, connection=connection, serializer=JSONSerializer)
        assert fetched.kwargs == {"value": value}


def test_threads_and_forked_children_enqueue_on_connections_of_their_own(tq, connection):
    tq.enqueue("add", a=0, b=0)  # the parent now holds a connection for scripts
    with ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(lambda i: tq.enqueue("add", a=i, b=i), range(200)))
    assert len({job.id for job in jobs}) == 200
    parents = set(map(id, script_calls._stack(tq.connection).idle))
    pid = os.fork()
    if pid == 0:  # the child must not share the parent's socket
        code = 1
        try:
            tq.enqueue("add", a=1, b=1, job_id="from-child")
            used = script_calls._stack(tq.connection).idle
            code = 0 if len(used) == 1 and id(used[0]) not in parents else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child enqueued on a connection of its parent's"
    tq.enqueue("add", a=2, b=2, job_id="from-parent")
    assert connection.llen(keys.queue_key("default")) == 203
    assert connection.exists(keys.job_key("from-child"), keys.job_key("from-parent")) == 2


def test_an_option_of_atomqs_own_is_a_line_in_field_options(tq, connection, monkeypatch):
    from atomq.core import options as core_options
    from atomq.engine import producer

    def group_option(value):
        if not isinstance(value, str) or not value:
            raise InvalidJobOptionError("group must be a non-empty string", field="group")
        return value

    monkeypatch.setattr(core_options, "ENQUEUE_OPTIONS", core_options.ENQUEUE_OPTIONS | {"group"})
    monkeypatch.setattr("atomq.engine.calls.ENQUEUE_OPTIONS", core_options.ENQUEUE_OPTIONS)
    monkeypatch.setitem(producer.FIELD_OPTIONS, "group", ("atomq_group", group_option))
    job = tq.enqueue("add", a=1, b=1, group="account-7")
    later = tq.enqueue_in(60, "add", a=1, b=1, group="account-7", job_id="g-later")
    assert connection.hget(keys.job_key(job.id), "atomq_group") == b"account-7"
    assert connection.hget(keys.job_key(later.id), "atomq_group") == b"account-7"
    with pytest.raises(InvalidJobOptionError) as caught:
        tq.enqueue("add", a=1, b=1, group="")
    assert caught.value.field == "group"


def test_scripts_called_together_reach_redis_in_one_read(connection):
    """A step's rate-limit calls for a batch of posts go out as one request (they were a send
    each, and Redis read them in a dozen pieces)."""
    script = Script("return redis.call('INCR', KEYS[1])")
    calls = [(script, [], [f"counter-{i}"]) for i in range(40)]
    call_scripts(connection, calls)  # loads the script and opens the connection first
    before = connection.info("stats")["total_reads_processed"]
    replies = call_scripts(connection, calls)
    reads = connection.info("stats")["total_reads_processed"] - before - 1  # the second INFO
    assert replies == [2] * 40
    assert reads == 1


def test_work_given_to_a_script_call_runs_once_while_the_call_is_in_flight(connection, redis_url):
    """``call_script(meanwhile=...)``: the sync queue builds the job it returns while Redis runs
    the script that writes it. Called once on every path: pooled, single connection, and a
    script Redis has forgotten (loaded and called again); on the pooled path, while the call
    still holds its connection (sent, reply not yet read)."""
    script = Script("return redis.call('INCR', KEYS[1])")
    call_script(connection, script, [], keys=["counted"])  # the pooled connection exists
    idle = script_calls._stack(connection).idle
    single = redis.Redis.from_url(redis_url, single_connection_client=True)
    try:
        for client in (connection, single, connection):
            seen: list[int] = []
            reply = call_script(
                client, script, [], keys=["counted"], meanwhile=lambda: seen.append(len(idle))
            )
            assert len(seen) == 1
            if client is connection:
                assert seen == [len(idle) - 1], "not while the call held its connection"
            assert reply == int(connection.get("counted"))
            connection.script_flush()  # the next call finds it unknown
    finally:
        single.close()
