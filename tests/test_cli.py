"""The `threadline` command as a person runs it, in a subprocess."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

THREADLINE = shutil.which("threadline", path=str(Path(sys.executable).parent)) or "threadline"


@pytest.fixture
def run(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    env["THREADLINE_DATA_DIR"] = str(tmp_path / "data")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([THREADLINE, *args], cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=60)

    return run


def test_link_show_resolve_unlink(run):
    linked = run("users", "link", "alice@x.co", "U98765ABC:slack", "user_123:internal")
    assert linked.returncode == 0, linked.stderr
    user = linked.stdout.split()[0]
    assert user.startswith("usr_") and "(new user)" in linked.stdout
    assert run("users", "resolve", "U98765ABC:slack").stdout.strip() == user
    shown = run("users", "show", "alice@x.co")
    assert "U98765ABC" in shown.stdout and "slack" in shown.stdout
    assert run("users", "unlink", "user_123:internal").returncode == 0
    gone = run("users", "resolve", "user_123:internal")
    assert gone.returncode == 1 and "--create" in gone.stderr


def test_errors_are_one_line_and_a_nonzero_exit(run):
    first = run("users", "link", "alice@x.co").stdout.split()[0]
    second = run("users", "link", "bob@x.co").stdout.split()[0]
    conflict = run("users", "link", "alice@x.co", "--user", second)
    assert conflict.returncode == 1
    assert "Traceback" not in conflict.stderr
    assert f"already linked to user {first}" in conflict.stderr.replace("\n", " ")
    bad = run("users", "resolve", "null")
    assert bad.returncode == 1 and "placeholder" in bad.stderr and "Traceback" not in bad.stderr


def test_migrate_reports_the_schema_state(run):
    check = run("migrate", "--check")
    assert check.returncode == 1 and "pending" in check.stdout
    assert "applied" in run("migrate").stdout
    assert "no pending" in run("migrate", "--check").stdout


def test_a_bad_database_url_is_a_clear_error(run, tmp_path):
    env_run = subprocess.run(
        [THREADLINE, "users", "resolve", "a@b.co"], cwd=tmp_path, text=True, capture_output=True,
        env={**os.environ, "THREADLINE_DATABASE_URL": "mysql://x"}, timeout=60,
    )
    assert env_run.returncode == 1 and "unsupported database URL scheme 'mysql'" in env_run.stderr


def test_help_lists_the_commands(run):
    out = run("--help").stdout
    for word in ("migrate", "users"):
        assert word in out


def test_one_identifier_syntax_typos_and_unknown_formations_are_refused(run):
    assert run("users", "link", "alice@x.co", "slack:U98765ABC").returncode == 0
    assert run("users", "resolve", "U98765ABC:slack").stdout == run(
        "users", "resolve", "slack:U98765ABC").stdout  # the older order still reads
    typo = run("users", "link", "foo:slakc")
    assert typo.returncode == 1 and "did you mean 'slack'" in typo.stderr
    spaced = run("users", "link", "x y:slack")
    assert spaced.returncode == 1 and "not a slack id" in spaced.stderr
    nowhere = run("users", "link", "-f", "nope", "bob@x.co")
    assert nowhere.returncode == 1 and "no formation 'nope'" in nowhere.stderr
    assert "bob@x.co" not in run("users", "show", "alice@x.co").stdout
    assert run("users", "resolve", "bob@x.co").returncode == 1  # nothing was written


def test_linking_two_existing_users_offers_the_merge(run):
    first = run("users", "link", "alice@x.co").stdout.split()[0]
    second = run("users", "link", "tg_606").stdout.split()[0]
    both = run("users", "link", "alice@x.co", "tg_606")
    assert both.returncode == 1 and len(both.stderr.strip().splitlines()) == 1
    assert f"threadline users merge {first} {second}" in both.stderr
