"""The operator's commands used as a DHCP host's admin would: `trapd journal`, `trapd kea`,
`trapd actions`, `trapd schema`, against real journals (SQLite files, the tests' PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pg_harness import SUPERUSER, PgServer

from trapd.cli import main
from trapd.dispatch.journal import NewEntry, SQLiteJournal
from trapd.dispatch.testing import make_event

# What a terminal acts on: C0 but the line feed that ends each line, DEL, C1.
_TERMINAL_CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def new(action: str, params: dict[str, object], key: str, **kw: object) -> NewEntry:
    base: dict[str, object] = dict(
        rule="port-up", action=action, index=0, params=params, key=key, mode="enforce",
        state="pending", due=time.time(), max_attempts=3, backoff=1.0, max_age=3600.0,
    )  # fmt: skip
    base.update(kw)
    return NewEntry(**base)  # type: ignore[arg-type]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def hostile_journal(tmp_path: Path) -> Path:
    """What a switch's text (ifDescr "Gi1\\rOK\\x1b[2J") and a program's stderr leave in the journal:
    a cancel key and a key (circuit-id) rendered from the trap, an error carrying the stderr."""
    trap_text = "Gi1\rOK\x1b[2J\x9b31m\u2028X"

    async def fill() -> None:
        async with SQLiteJournal(tmp_path / "journal.sqlite") as j:
            now = time.time()
            ev = make_event(source="10.20.1.5").to_dict()
            r = await j.add(
                ev,
                [
                    new(
                        "exec",
                        {"argv": ["/bin/false", trap_text]},
                        "port-up#0@x",
                        cancel_key=f"k:{trap_text}",
                    ),
                    new("kea.lease-del", {"circuit-id": trap_text}, f"circuit-id={trap_text}", index=1),
                ],
                [],
                now,
            )
            await j.claim(r.ids[0], now)
            await j.finish(r.ids[0], "dead", now, None, f"permanent error: exited with 3: {trap_text}\x07")

    asyncio.run(fill())
    return tmp_path


def test_journal_text_output_escapes_terminal_controls(
    hostile_journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trap value or a program's stderr cannot move the cursor, clear the screen or forge a line
    in `trapd journal list / history / show`: control characters are shown as escapes."""
    j = ("journal", "--state-dir", str(hostile_journal))
    for argv in (("list", "--state", "all"), ("history", "--rule", "port-up"), ("show", "1"), ("show", "2")):
        rc, out, _ = run(capsys, *j, *argv)
        assert rc == 0, argv
        assert not _TERMINAL_CONTROLS.search(out), (argv, out)
    _, out, _ = run(capsys, *j, "show", "1")
    assert "cancel_key    k:Gi1\\rOK\\x1b[2J\\x9b31m\\u2028X" in out
    assert "exited with 3: Gi1\\rOK\\x1b[2J\\x9b31m\\u2028X\\x07" in out
    _, out, _ = run(capsys, *j, "list", "--state", "all")
    assert "circuit-id=Gi1\\rOK" in out  # the ABOUT column of entry 2
    # JSON keeps the values as they are (escaped by JSON itself).
    _, out, _ = run(capsys, *j, "--json", "show", "1")
    assert json.loads(out)["cancel_key"] == "k:Gi1\rOK\x1b[2J\x9b31m\u2028X"


def _columns(path: Path) -> set[str]:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return {r[1] for r in conn.execute("PRAGMA table_info(actions)")}


@pytest.fixture
def old_journal(tmp_path: Path) -> Path:
    """A journal as a trapd before the ``owner`` column left it (the daemon adds the column when
    it opens the file; an operator may look at the journal before that, or at a copy)."""
    import sqlite3

    async def fill() -> None:
        async with SQLiteJournal(tmp_path / "journal.sqlite") as j:
            ev = make_event(source="10.20.1.5").to_dict()
            await j.add(ev, [new("log", {"message": "m"}, "k1", mac="00:11:22:33:44:55")], [], time.time())

    asyncio.run(fill())
    with sqlite3.connect(tmp_path / "journal.sqlite") as conn:
        conn.execute("ALTER TABLE actions DROP COLUMN owner")
    assert "owner" not in _columns(tmp_path / "journal.sqlite")
    return tmp_path


def test_an_old_journal_is_read_without_being_upgraded(
    old_journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    j = ("journal", "--state-dir", str(old_journal))
    rc, out, err = run(capsys, *j, "list")
    assert rc == 0 and out.splitlines()[1].split()[:2] == ["1", "pending"], err
    rc, out, err = run(capsys, *j, "show", "1")
    assert rc == 0 and re.search(r"^owner +None$", out, re.M), err
    rc, out, err = run(capsys, *j, "--json", "history", "--mac", "00:11:22:33:44:55")
    assert rc == 0 and json.loads(out)["owner"] is None, err
    # Reading changed nothing: the daemon upgrades the file, not a look at it.
    assert "owner" not in _columns(old_journal / "journal.sqlite")


def test_kea_restore_reads_the_journal_and_changes_nothing_there(
    old_journal: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`trapd kea restore ID` only reads the journal: a missing state directory is not made (nor
    an empty journal in it), a damaged journal is reported in one line, not a traceback, and a
    journal an older trapd made is not upgraded behind that trapd's back."""
    missing = tmp_path / "nothing" / "state"
    cfg = tmp_path / "missing.yaml"
    cfg.write_text(f"state_dir: {missing}\n")
    rc, _, err = run(capsys, "kea", "restore", "4", "-c", str(cfg))
    assert rc == 1 and f"no journal at {missing / 'journal.sqlite'}" in err
    assert not (tmp_path / "nothing").exists()

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "journal.sqlite").write_bytes(b"\x00garbage" * 4096)
    cfg.write_text(f"state_dir: {damaged}\n")
    rc, _, err = run(capsys, "kea", "restore", "4", "-c", str(cfg))
    assert rc == 1 and "is not an SQLite database" in err and "Traceback" not in err

    cfg.write_text(f"state_dir: {old_journal}\n")
    (old_journal / "journal.sqlite-writers.lock").unlink()  # what a writer opens
    rc, _, err = run(capsys, "kea", "restore", "1", "-c", str(cfg))
    assert rc == 1 and "journal entry 1 is log, not kea.lease-del" in err
    assert "owner" not in _columns(old_journal / "journal.sqlite")
    assert not (old_journal / "journal.sqlite-writers.lock").exists()


def _in_read_only_mount(directory: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``trapd ARGV`` in a mount namespace where ``directory`` is read-only (a bind mount remounted
    ro: a backup's mount, a state directory that systemd's ProtectSystem= left read-only)."""
    import shlex
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (a mount namespace)")
    d = shlex.quote(str(directory))
    trapd = shlex.join([sys.executable, "-m", "trapd", *argv])
    script = f"mount --bind {d} {d} && mount -o remount,bind,ro {d} && exec {trapd}"
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=120
    )


def test_a_read_only_state_directory_is_not_called_damaged(hostile_journal: Path) -> None:
    """A healthy journal in a read-only directory: SQLite cannot make the -shm file a WAL journal
    needs. The inspection commands read it anyway; a write says what is wrong. Neither calls it
    damaged and tells the operator to move a healthy journal aside."""
    j = ("journal", "--state-dir", str(hostile_journal))
    r = _in_read_only_mount(hostile_journal, *j, "list", "--state", "all")
    assert r.returncode == 0, r.stderr
    assert [ln.split()[:2] for ln in r.stdout.splitlines()[1:]] == [["1", "dead"], ["2", "pending"]]
    assert "damaged" not in r.stderr
    r = _in_read_only_mount(hostile_journal, *j, "show", "2")
    assert r.returncode == 0 and "kea.lease-del" in r.stdout, r.stderr
    r = _in_read_only_mount(hostile_journal, *j, "retry", "1")
    assert r.returncode == 2 and "damaged" not in r.stderr and "move it aside" not in r.stderr, r.stderr
    assert "read-only" in r.stderr and str(hostile_journal / "journal.sqlite") in r.stderr, r.stderr


def test_actions_says_optional_not_default_none(capsys: pytest.CaptureFixture[str]) -> None:
    """`trapd actions` showed every optional parameter as "default None" (Python's spelling, not
    what a rule file says) and a duration's default as bare seconds (30.0, where a rule writes 30s)."""
    rc, out, _ = run(capsys, "actions")
    assert rc == 0 and "None" not in out
    assert "cwd: string, optional  (working directory" in out
    assert "timeout: duration [0.001..86400], default 30s  (the program" in out
    rc, out, _ = run(capsys, "actions", "webhook")
    assert rc == 0 and "headers: mapping, optional (secret)" in out
    rc, out, _ = run(capsys, "actions", "--json")
    exec_params = next(a for a in json.loads(out)["actions"] if a["name"] == "exec")["params"]
    assert exec_params["cwd"]["describe"] == "string, optional" and exec_params["cwd"]["default"] is None


def test_a_postgresql_journal_that_refuses_the_connection_says_why(
    pg_server: PgServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong database name (or password, or host) in dispatch.journal.url: `trapd journal list`
    said "pool initialization incomplete after 5.0 sec" after 5 s, with the reason only in the
    connection pool's own warnings, printed raw beside it. Now the server's answer, in one line."""
    import yaml

    url = pg_server.url("no_such_db")
    cfg = tmp_path / "trapd.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path), "dispatch": {"journal": {"url": url}}}))
    rc, out, err = run(capsys, "journal", "-c", str(cfg), "list")
    assert rc == 2 and out == ""
    assert err.splitlines() == [err.strip()], err  # one line, no pool warnings around it
    assert 'database "no_such_db" does not exist' in err and "pool" not in err, err
    assert err.startswith("trapd journal: cannot connect to the journal database: "), err


@pytest.mark.parametrize(
    "argv",
    [
        ("journal", "retry", "99999999999999999999"),
        ("journal", "cancel", "1", "99999999999999999999"),
        ("journal", "release", "99999999999999999999"),
        ("journal", "show", "99999999999999999999"),
        ("journal", "show", "0"),
        ("journal", "list", "--limit", "0"),
        ("journal", "history", "--limit", "-1"),
        ("journal", "list", "--limit", "99999999999999999999"),
        ("kea", "restore", "99999999999999999999"),
    ],
)
def test_an_id_or_limit_out_of_range_is_a_usage_error(
    hostile_journal: Path, argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    """An id past SQLite's 64-bit integers ended in an OverflowError traceback (retry, cancel,
    release) or a "reading the journal failed" error; --limit 0 printed "the newest 0 shown" and
    -1 meant no limit. They are usage errors, said by argparse, before any journal is opened."""
    where = ["--state-dir", str(hostile_journal)] if argv[0] == "journal" else []
    cfg = hostile_journal / "trapd.yaml"
    cfg.write_text(f"state_dir: {hostile_journal}\n")
    full = [argv[0], *where, *argv[1:], *(["-c", str(cfg)] if argv[0] == "kea" else [])]
    with pytest.raises(SystemExit) as exit_:
        main(full)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err and ("not an action id" in err or "not a positive number" in err), err


def test_schema_output_that_cannot_be_written_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "no-such-dir" / "rules.schema.json"
    rc, out, err = run(capsys, "schema", "rules", "-o", str(target))
    assert rc == 1 and out == ""
    assert err.startswith(f"trapd schema: cannot write {target}: No such file or directory"), err


@pytest.mark.parametrize(
    ("content", "rc", "says"),
    [
        ("[1, 2]", 1, "holds no leases"),
        ('{"leases": "x"}', 1, "holds no leases"),
        ('{"result": 0}', 1, "holds no leases"),
        ('{"leases": [{"ip-address": "zzz", "hw-address": "00:11:22:33:44:55"}]}', 1, "lease 1: 'zzz'"),
        ('{"leases": [{"ip-address": 17}]}', 1, "lease 1: 17"),
        ('{"leases": []}', 0, "nothing to restore: no leases recorded"),
        ("[]", 0, "nothing to restore: no leases recorded"),
    ],
)
def test_kea_restore_from_a_file_that_holds_no_leases_says_so(
    tmp_path: Path, content: str, rc: int, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file of something else was "nothing to restore" with exit 0 (a wrong file passed for a
    successful restore), and a lease whose address is not one ended in a ValueError traceback."""
    cfg = tmp_path / "trapd.yaml"
    cfg.write_text(f"state_dir: {tmp_path}\n")
    f = tmp_path / "leases.json"
    f.write_text(content)
    got, out, err = run(capsys, "kea", "restore", "--file", str(f), "--dry-run", "-c", str(cfg))
    assert got == rc and says in out + err, (out, err)
    assert "Traceback" not in err


def test_retry_cancel_release_name_the_ids_they_did_not_change(
    hostile_journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`retry 1 99`: 1 is retried, 99 does not exist. It printed "retried: 1" and exit 0, as if
    both had been; the ids left alone are named and the exit status is 1."""
    j = ("journal", "--state-dir", str(hostile_journal))
    rc, out, err = run(capsys, *j, "retry", "1", "99")
    assert rc == 1 and out.startswith("retried: 1\n"), (out, err)
    assert "not retried: 99 (no such id, or not in a state that allows it" in err
    rc, out, err = run(capsys, *j, "--json", "cancel", "2", "1")  # 1 is pending again: cancelled
    assert rc == 0 and json.loads(out) == {"cancelled": [1, 2], "unchanged": []}, (out, err)
    rc, out, err = run(capsys, *j, "--json", "cancel", "2", "77")
    assert rc == 1 and json.loads(out) == {"cancelled": [], "unchanged": [2, 77]}, (out, err)
    rc, out, err = run(capsys, *j, "release", "2")
    assert rc == 1 and "nothing released" in out and "not released: 2" in err


def test_kea_restore_from_another_journal_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The leases a deletion recorded in a journal that is not this host's journal now (one moved
    aside as damaged, a copy from the host that failed): `--journal FILE`, as trapd journal takes."""
    lease = {"ip-address": "10.9.8.7", "hw-address": "0a:00:27:00:ee:01", "subnet-id": 1,
             "cltt": int(time.time()), "valid-lft": 3600, "hostname": "", "state": 0}  # fmt: skip
    aside = tmp_path / "journal.sqlite.damaged"

    async def fill() -> int:
        async with SQLiteJournal(aside) as j:
            now = time.time()
            r = await j.add(
                make_event().to_dict(), [new("kea.lease-del", {"ip-address": "10.9.8.7"}, "k")], [], now
            )
            await j.claim(r.ids[0], now)
            await j.finish(r.ids[0], "done", now, {"deleted": 1, "leases": [lease], "endpoint": "local4"})
            return r.ids[0]

    id_ = asyncio.run(fill())
    cfg = tmp_path / "trapd.yaml"
    cfg.write_text(  # this host's journal: none yet; its Kea: the endpoint the record names
        f"state_dir: {tmp_path / 'state'}\n"
        f"kea: {{endpoints: {{local4: {{transport: unix, socket: {tmp_path / 'kea4.sock'}, family: v4}}}}}}\n"
    )
    argv = ("kea", "restore", str(id_), "--journal", str(aside), "--dry-run", "-c", str(cfg))
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    sent = json.loads(out)
    assert sent["command"] == "lease4-add" and sent["arguments"]["ip-address"] == "10.9.8.7"
    assert sent["endpoint"] == "local4"
    assert sent["arguments"]["expire"] == lease["cltt"] + lease["valid-lft"]
    assert not (tmp_path / "state").exists()


def test_a_write_as_root_leaves_no_file_the_daemons_user_cannot_open(
    hostile_journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sudo trapd journal retry ID` on the journal of a trapd that runs as its own user: the
    writers' lock file it made was root's, 0600, and the daemon (after its next start) could not
    open it, silently losing the lock that orders its workers' commits. It goes to the journal's
    owner, as SQLite does with the -wal and -shm files it makes as root."""
    import pwd

    if os.geteuid() != 0:
        pytest.skip("needs root (a write as root into another user's state directory)")
    nobody = pwd.getpwnam("nobody")
    (hostile_journal / "journal.sqlite-writers.lock").unlink()
    for p in (hostile_journal, hostile_journal / "journal.sqlite"):
        os.chown(p, nobody.pw_uid, nobody.pw_gid)
    rc, _, err = run(capsys, "journal", "--state-dir", str(hostile_journal), "retry", "1")
    assert rc == 0, err
    made = [p for p in hostile_journal.iterdir() if p.name.startswith("journal.sqlite")]
    assert made and all(p.stat().st_uid == nobody.pw_uid for p in made), [
        (p.name, p.stat().st_uid) for p in made
    ]


def test_json_output_is_json_or_nothing(hostile_journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`trapd journal --json show 99 | jq` got the text "no action 99 in the journal" on stdout;
    what is not JSON goes to stderr, whatever the exit status."""
    j = ("journal", "--state-dir", str(hostile_journal), "--json")
    for argv, rc in (
        (("show", "99"), 1),
        (("list", "--state", "done"), 0),
        (("history", "--rule", "nothing-like-it"), 1),
        (("retry", "99"), 1),
        (("list", "--state", "all", "--limit", "1"), 0),
    ):
        got, out, err = run(capsys, *j, *argv)
        assert got == rc, (argv, err)
        for line in out.splitlines():
            json.loads(line)
    _, out, err = run(capsys, *j, "show", "99")
    assert out == "" and "no action 99 in the journal" in err


def test_history_finds_a_switch_by_any_spelling_of_its_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An IPv6 switch is journaled as the socket names it (2001:db8::5); `--switch 2001:DB8:0::5`
    (as a switch's config or a monitoring tool writes it) found nothing, exit 1, like --mac and
    --ip, which take any spelling."""

    async def fill() -> None:
        async with SQLiteJournal(tmp_path / "journal.sqlite") as j:
            ev = make_event(source="2001:db8::5").to_dict()
            await j.add(ev, [new("log", {"message": "m"}, "k1")], [], time.time())

    asyncio.run(fill())
    j = ("journal", "--state-dir", str(tmp_path), "--json", "history")
    for spelling in ("2001:db8::5", "2001:DB8:0::5", "2001:0db8:0000:0000:0000:0000:0000:0005"):
        rc, out, err = run(capsys, *j, "--switch", spelling)
        assert rc == 0 and [json.loads(ln)["id"] for ln in out.splitlines()] == [1], (spelling, err)
    assert run(capsys, *j, "--switch", "2001:db8::6")[0] == 1


def test_a_state_directory_this_user_cannot_enter_is_said_not_a_traceback(hostile_journal: Path) -> None:
    """trapd keeps its state directory 0700: an admin who forgets sudo got a PermissionError
    traceback from `trapd journal list`. One line says whose directory it is."""
    import pwd
    import sys

    if os.geteuid() != 0:
        pytest.skip("needs root (to run the command as another user)")
    nobody = pwd.getpwnam("nobody")

    def as_nobody() -> None:
        os.setgid(nobody.pw_gid)
        os.setgroups([])
        os.setuid(nobody.pw_uid)

    def trapd(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "trapd", *argv], capture_output=True, text=True, timeout=60,
            preexec_fn=as_nobody, cwd="/",
        )  # fmt: skip

    if trapd("--version").returncode != 0:
        pytest.skip("this checkout is not readable by nobody")
    os.chmod(hostile_journal, 0o700)  # as trapd makes it; owned by root here
    for argv in (("list",), ("show", "1"), ("retry", "1")):
        r = trapd("journal", "--state-dir", str(hostile_journal), *argv)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (argv, r.stderr)
        assert r.stderr.startswith(f"trapd journal: cannot read {hostile_journal}: permission denied"), (
            r.stderr
        )


@pytest.mark.parametrize(
    ("community", "says"),
    [
        ("", "an empty community"),
        ("env:", "env: needs a name after the colon"),
        ("file:", "file: needs a path after the colon"),
        ("env:TRAPD_TEST_EMPTY_COMMUNITY", "an empty community"),
    ],
)
def test_run_refuses_an_empty_community(tmp_path: Path, community: str, says: str) -> None:
    """`trapd run --community ''` (or an unset-looking env:, a variable set to nothing) started a
    daemon that accepted every trap carrying an empty community, and `--community env:` made the
    four characters "env:" a community. Refused at start, exit 2."""
    import sys

    env = {**os.environ, "TRAPD_TEST_EMPTY_COMMUNITY": ""}
    argv = ["run", "--listen", "127.0.0.1:0", "--metrics", "off", "--state-dir", str(tmp_path / "s"),
            "--community", community]  # fmt: skip
    r = subprocess.run(
        [sys.executable, "-m", "trapd", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert not (tmp_path / "s").exists()


def test_trapd_yaml_refuses_an_empty_community(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """In trapd.yaml too, written as "" or read from a file whose first line is empty (a secret
    file a deploy created but did not fill): with file:line."""
    (tmp_path / "community").write_text("\nsecond line\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    for written, line in (('[""]', 2), ("[public, {file: community}]", 2)):
        cfg = tmp_path / "trapd.yaml"
        cfg.write_text(f"listener:\n  communities: {written}\nrules: {{files: [{rules}]}}\n")
        rc, out, err = run(capsys, "check", "-c", str(cfg))
        assert rc != 0 and f"{cfg}:{line}:" in out + err and "an empty community" in out + err, (out, err)


def test_migrate_by_a_role_that_may_not_create_tables_says_so(
    pg_server: PgServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL 15 lets only the database's owner create tables in its public schema: a DBA who
    made the database and gave trapd's role a login got a psycopg traceback from `trapd journal
    migrate`. One line says what the server refused and what to grant; nothing was changed."""
    import yaml

    role = f"trapd_low_{os.getpid()}"
    pg_server.psql(f"CREATE ROLE {role} LOGIN")
    url = pg_server.new_database(migrated=False)
    low = url.replace(f"{SUPERUSER}@", f"{role}@")
    cfg = tmp_path / "trapd.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path), "dispatch": {"journal": {"url": low}}}))
    rc, out, err = run(capsys, "journal", "-c", str(cfg), "migrate")
    assert rc == 2 and out == "", (out, err)
    assert err.startswith(
        "trapd journal: migration failed, nothing changed: permission denied for schema public"
    ), err
    assert f"GRANT CREATE ON SCHEMA public TO {role}" in err
    assert len(err.splitlines()) == 1, err
    dbname = url.split("@/")[1].split("?")[0]
    assert pg_server.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", dbname) == "0"


def test_json_objects_have_the_same_keys_on_every_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A consumer of `--json` reads each key of each object: keys that came and went with the row
    (held_at / hold_expires only on held actions; peer / ha only on HA endpoints) are there on
    every object, null where they do not apply."""
    from trapd.dispatch.journal import CapCheck

    async def fill() -> None:
        async with SQLiteJournal(tmp_path / "journal.sqlite") as j:
            now = time.time()
            ev = make_event(source="10.20.1.5").to_dict()
            cap = CapCheck("port-up/deletions", "10.20.1.5", 0, 60.0, 3600.0)
            r = await j.add(ev, [new("log", {"message": "held"}, "k1", caps=(cap,))], [], now)
            assert (await j.claim(r.ids[0], now)).outcome == "held"
            await j.add(ev, [new("log", {"message": "waits"}, "k2")], [], now)

    asyncio.run(fill())
    _, out, _ = run(capsys, "journal", "--state-dir", str(tmp_path), "--json", "list")
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2 and rows[0].keys() == rows[1].keys()
    assert rows[0]["held_at"] is not None and rows[1]["held_at"] is None and rows[1]["hold_expires"] is None

    import yaml

    cfg = tmp_path / "trapd.yaml"
    gone = {"transport": "unix", "socket": str(tmp_path / "no.sock"), "family": "v4"}
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path), "kea": {"endpoints": {"local4": gone}}}))
    rc, out, _ = run(capsys, "kea", "status", "--json", "-c", str(cfg))
    (status,) = json.loads(out)
    assert rc == 1 and status["reachable"] is False
    assert status["peer"] is None and status["ha"] is None


def test_kea_status_finds_the_sockets_of_the_two_families_swapped(
    kea: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """trapd.yaml's v6 endpoint naming kea-dhcp4's socket (and v4 kea-dhcp6's): both answer
    version-get and list the lease_cmds commands of both families, and kea-dhcp4 answers
    lease6-get-page with "0 IPv6 lease(s) found", so every v6 deletion found nothing and "worked".
    `trapd kea status` said both were fine. Each server's own statistics say which it is."""
    import yaml

    eps = kea.endpoints()
    swapped = {
        "local4": {**eps["unix4"], "socket": eps["unix6"]["socket"]},
        "local6": {**eps["unix6"], "socket": eps["unix4"]["socket"]},
        "right4": eps["unix4"],
    }
    cfg = tmp_path / "trapd.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path), "kea": {"endpoints": swapped}}))
    rc, out, err = run(capsys, "kea", "status", "--json", "-c", str(cfg))
    by_name = {s["endpoint"]: s for s in json.loads(out)}
    assert rc == 1, err
    assert "serves DHCPv6, not DHCPv4" in by_name["local4"]["error"], by_name["local4"]
    assert "serves DHCPv4, not DHCPv6" in by_name["local6"]["error"], by_name["local6"]
    assert by_name["right4"]["error"] is None and by_name["right4"]["reachable"]
    rc, out, err = run(capsys, "kea", "status", "-c", str(cfg))
    assert rc == 1 and "local6 (v6): " in err and "the other family's socket" in err, err


def test_migrate_with_json_prints_json(
    pg_server: PgServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`trapd journal --json migrate` took --json and printed text: a deployment script that
    reads the schema version got "journal schema created -> 7"."""
    import yaml

    from trapd.dispatch.journal.postgres import SCHEMA_VERSION

    url = pg_server.new_database(migrated=False)
    cfg = tmp_path / "trapd.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path), "dispatch": {"journal": {"url": url}}}))
    rc, out, _ = run(capsys, "journal", "-c", str(cfg), "--json", "migrate")
    assert rc == 0 and json.loads(out) == {"backend": "postgresql", "before": None, "after": SCHEMA_VERSION}
    rc, out, _ = run(capsys, "journal", "-c", str(cfg), "migrate", "--json")
    assert rc == 0 and json.loads(out) == {
        "backend": "postgresql",
        "before": SCHEMA_VERSION,
        "after": SCHEMA_VERSION,
    }
    rc, out, _ = run(capsys, "journal", "--state-dir", str(tmp_path), "--json", "migrate")
    assert rc == 0 and json.loads(out) == {"backend": "sqlite", "before": None, "after": None}


@pytest.mark.parametrize("when", ["inf", "nan", "1e400", "infinity"])
def test_a_time_that_is_no_time_is_a_usage_error(
    hostile_journal: Path, when: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--since nan` (or inf) was taken as Unix seconds: nothing matched, exit 1, as if the
    journal had nothing then."""
    rc, out, err = run(capsys, "journal", "--state-dir", str(hostile_journal), "history", "--since", when)
    assert rc == 2 and out == "" and f"not a time: {when!r}" in err, (out, err)


def test_a_dry_run_action_is_not_shown_as_an_action_that_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rule in dry-run mode journals its actions as done with nothing run. `trapd journal
    history --mac` ("which trap deleted this lease?") listed such a kea.lease-del as "done", the
    same line as a deletion that happened; the NOTE column says it was a dry run."""
    mac = "00:11:22:33:44:55"

    async def fill() -> None:
        async with SQLiteJournal(tmp_path / "journal.sqlite") as j:
            ev = make_event(source="10.20.1.5").to_dict()
            dry = new("kea.lease-del", {"hw-address": mac}, "k1", mode="dry-run", state="done",
                      result={"dry_run": True}, mac=mac)  # fmt: skip
            real = new("kea.lease-del", {"hw-address": mac}, "k2", mac=mac)
            r = await j.add(ev, [dry, real], [], time.time())
            await j.claim(r.ids[1], time.time())
            await j.finish(r.ids[1], "done", time.time(), {"deleted": 1, "leases": []})

    asyncio.run(fill())
    rc, out, _ = run(capsys, "journal", "--state-dir", str(tmp_path), "history", "--mac", mac)
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert rc == 0 and set(rows) == {"1", "2"}
    assert rows["1"].rstrip().endswith("dry run: nothing was run"), out
    assert "dry run" not in rows["2"], out


def test_journal_text_output_escapes_bidirectional_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trap value with U+202E (RIGHT-TO-LEFT OVERRIDE) or an isolate (U+2066..U+2069) in a key
    or an error: a terminal that does bidi (VTE, Konsole, mlterm) showed the rest of the line
    reversed, so `trapd journal list` could show a NOTE or an ABOUT other than the journal's
    ("Trojan Source" in a table). Shown as escapes, as the other format controls are."""
    text = "Gi1\u202eenod\u2066x\u2069\u200f"

    async def fill() -> None:
        async with SQLiteJournal(tmp_path / "journal.sqlite") as j:
            now = time.time()
            r = await j.add(make_event().to_dict(), [new("log", {"message": text}, f"k:{text}")], [], now)
            await j.claim(r.ids[0], now)
            await j.finish(r.ids[0], "dead", now, None, f"refused: {text}")

    asyncio.run(fill())
    for argv in (("list", "--state", "all"), ("show", "1")):
        rc, out, _ = run(capsys, "journal", "--state-dir", str(tmp_path), *argv)
        assert rc == 0, argv
        assert not any(c in out for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
        assert "Gi1\\u202eenod\\u2066x\\u2069\\u200f" in out, out
