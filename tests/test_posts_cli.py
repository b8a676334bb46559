"""``atomq accounts`` and ``atomq posts``: what a person at a terminal sees."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from atomq.cli import exits
from atomq.core.timeutil import utcnow
from testkit.support import run_cli


@pytest.fixture
def database_url(tmp_path):
    """The CLI is a thin shell over the services tested on both databases: SQLite suffices here."""
    return f"sqlite:///{tmp_path / 'atomq.db'}"


def test_accounts_and_posts_from_the_command_line(posts_env, mastodon, connection):
    def cli(*args, input=None):
        return run_cli(posts_env, *args, input=input)

    outbox = cli("accounts", "add", "outbox", "local")
    assert outbox.returncode == 0, outbox.stderr
    outbox_id = outbox.stdout.strip()
    assert outbox_id.startswith("acct_")
    masto = cli(
        "accounts",
        "add",
        "mastodon",
        "@me@fake.social",
        "--url",
        mastodon.url,
        "--credentials-stdin",
        "--json",
        input=json.dumps({"access_token": "cli-secret-token"}),
    )
    assert masto.returncode == 0, masto.stderr
    assert json.loads(masto.stdout)["has_credentials"] is True
    assert "cli-secret-token" not in masto.stdout
    listed = cli("accounts", "list")
    assert outbox_id in listed.stdout and "@me@fake.social" in listed.stdout
    assert "cli-secret-token" not in listed.stdout

    due = (utcnow() + timedelta(hours=2)).replace(microsecond=0)
    created = cli(
        "posts", "create", "--account", outbox_id, "--content", "from the CLI", "--at", due.isoformat()
    )
    assert created.returncode == 0, created.stderr
    post_id = created.stdout.strip()
    assert connection.zscore("rq:scheduled:social_media", f"{post_id}-r1") == due.timestamp()
    naive = cli("posts", "create", "--account", outbox_id, "--content", "x", "--at", "2030-01-01T09:00:00")
    assert naive.returncode == exits.USAGE
    assert naive.stderr.startswith("error: scheduled_for 2030-01-01T09:00:00 has no UTC offset")
    assert len(naive.stderr.strip().splitlines()) == 1
    zoned = cli(
        "posts",
        "create",
        "--account",
        outbox_id,
        "--content",
        "x",
        "--at",
        "2030-01-01T09:00:00",
        "--timezone",
        "Europe/Paris",
        "--json",
    )
    assert json.loads(zoned.stdout)["scheduled_for"].startswith("2030-01-01T08:00:00")

    shown = cli("posts", "show", post_id, "--json")
    body = json.loads(shown.stdout)
    assert body["status"] == "scheduled"
    assert body["job"]["status"] == "scheduled"
    table = cli("posts", "list", "--status", "scheduled")
    assert post_id in table.stdout and "from the CLI" in table.stdout

    canceled = cli("posts", "cancel", post_id)
    assert canceled.returncode == 0
    assert canceled.stdout.strip() == f"canceled {post_id}"
    missing = cli("posts", "cancel", "post_nope")
    assert missing.returncode == exits.NOT_FOUND
    assert missing.stderr.strip() == "error: no scheduled post 'post_nope'"
    busy = cli("accounts", "remove", outbox_id)  # one post is still scheduled
    assert busy.returncode == exits.CONFLICT
    assert "still has 1 post(s)" in busy.stderr
