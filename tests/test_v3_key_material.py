"""v3 users given key material instead of passphrases: master keys (net-snmp's -3m/-3M) and keys
localized to one engine ID (-3k/-3K), for every auth x priv pair, on both receive paths.

A site that keeps no passphrase on the DHCP host configures ``auth_key_type`` / ``priv_key_type``
``master`` or ``localized`` with the key in hex, as net-snmp prints and takes it. A localized
key works for the one engine ID it was localized for: the sender's for traps (the fast path),
trapd's own for informs (pysnmp's engine); the configuration says so with ``engine_ids``.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from listen_harness import TrapdListen, needs_netsnmp, snmp_send
from test_usm_netsnmp import NETSNMP_PRIV
from usm_support import AUTHS

from trapd.listener.config import KEY_LENGTHS
from trapd.listener.v3.keys import AUTH_PROTOCOLS, extend_priv_key, localize_key, localized_user
from trapd.secrets import Secret

SENDER = "8000000001020305"
TRAPD = "80004fb805aabbccddeeff0012"
MARK_OID = "1.3.6.1.4.1.99999.1"
# net-snmp's -x name -> trapd's priv_protocol (None: authNoPriv)
PRIVS: dict[str | None, str] = {None: "none", **NETSNMP_PRIV}
COMBOS = [(a, x) for a in AUTHS for x in PRIVS]


def slug(auth: str, x: str | None) -> str:
    return f"{auth}-{x or 'auth'}".lower()


def master(auth: str, side: str, name: str) -> bytes:
    """A master key Ku for ``auth`` (any octets of the hash's length will do)."""
    return hashlib.sha512(f"{side}-{name}".encode()).digest()[: KEY_LENGTHS[auth]]


def local(auth: str, side: str, name: str, engine: str, x: str | None = None) -> bytes:
    """Ku localized to ``engine``; a privacy key extended as ``x`` needs (net-snmp's stored form)."""
    hash_name = AUTH_PROTOCOLS[auth][0]
    kul = localize_key(master(auth, side, name), bytes.fromhex(engine), hash_name)
    return extend_priv_key(kul, bytes.fromhex(engine), hash_name, PRIVS[x]) if x else kul


def entry(auth: str, x: str | None, key_type: str, engine: str, *, extended: bool) -> dict[str, Any]:
    name = f"{key_type[0]}-{slug(auth, x)}"

    def key(side: str) -> str:
        if key_type == "master":
            return "0x" + master(auth, side, name).hex()
        return "0x" + local(auth, side, name, engine, x if side == "priv" and extended else None).hex()

    d: dict[str, Any] = {
        "user": name,
        "auth_protocol": auth,
        "auth_key": key("auth"),
        "auth_key_type": key_type,
        "engine_ids": [engine],
    }
    if x:
        d |= {"priv_protocol": PRIVS[x], "priv_key": key("priv"), "priv_key_type": key_type}
    return d


def netsnmp_args(auth: str, x: str | None, key_type: str, engine: str) -> list[str]:
    """snmptrap / snmpinform arguments with -3m/-3M or -3k/-3K (the localized priv key as the
    hash gives it: net-snmp extends it itself where the protocol needs more)."""
    name = f"{key_type[0]}-{slug(auth, x)}"
    args = ["-v", "3", "-u", name, "-e", "0x" + engine, "-l", "authPriv" if x else "authNoPriv", "-a", auth]
    if key_type == "master":
        args += ["-3m", "0x" + master(auth, "auth", name).hex()]
        if x:
            args += ["-x", x, "-3M", "0x" + master(auth, "priv", name).hex()]
    else:
        args += ["-3k", "0x" + local(auth, "auth", name, engine).hex()]
        if x:
            args += ["-x", x, "-3K", "0x" + local(auth, "priv", name, engine).hex()]
    return args


def trap_args(mark: str) -> list[str]:
    return ["", "1.3.6.1.6.3.1.1.5.3", MARK_OID, "s", mark]


# -- the configuration ----------------------------------------------------------------------


def load(tmp_path: Path, users: str) -> Any:
    from trapd.config import load_config

    (tmp_path / "trapd.yaml").write_text(f"listener:\n  engine_id: {TRAPD}\n  v3_users:\n{users}")
    return load_config(tmp_path / "trapd.yaml").listener


SHA_KU = "0x" + "ab" * 20


@pytest.mark.parametrize(
    ("users", "line", "says"),
    [
        (  # a localized key and no engine: it works with one engine only
            f"    - {{user: u, auth_protocol: SHA, auth_key: '{SHA_KU}', auth_key_type: localized}}\n",
            4,
            "localized for",
        ),
        (
            f"    - user: u\n      auth_protocol: SHA\n      auth_key: '{SHA_KU}'\n"
            "      auth_key_type: master\n"
            f"      priv_protocol: AES\n      priv_key: '{SHA_KU}'\n      priv_key_type: localized\n"
            f"      engine_ids: ['{SENDER}', '{TRAPD}']\n",
            11,
            "localized for",
        ),
        (  # a SHA-256 key is 32 octets, not SHA's 20
            f"    - {{user: u, auth_protocol: SHA-256, auth_key: '{SHA_KU}', auth_key_type: master}}\n",
            4,
            "is 20 octets; a master key for SHA-256 is 32",
        ),
        (  # AES-256 with SHA: the 20 octets the hash gives, or the 32 extended; not 24
            f"    - {{user: u, auth_protocol: SHA, auth_key: '{SHA_KU}', auth_key_type: localized,\n"
            f"       priv_protocol: AES-256, priv_key: '0x{'cd' * 24}', priv_key_type: localized,"
            f" engine_ids: ['{SENDER}']}}\n",
            5,
            "is 24 octets; a localized key for SHA is 20 or 32",
        ),
        (
            "    - {user: u, auth_protocol: MD5, auth_key: 'a passphrase', auth_key_type: master}\n",
            4,
            "not a master key in hex",
        ),
        (
            f"    - {{user: u, auth_protocol: MD5, auth_key: '{SHA_KU}', auth_key_type: derived}}\n",
            4,
            "auth_key_type must be one of passphrase, master, localized",
        ),
        (
            "    - {user: u, auth_protocol: MD5, auth_key: 'a passphrase', priv_key_type: master}\n",
            4,
            "priv_key_type without a priv_protocol",
        ),
    ],
)
def test_key_material_that_cannot_work_is_refused_with_its_line(
    tmp_path: Path, users: str, line: int, says: str
) -> None:
    from trapd.yamlsource import ConfigError

    with pytest.raises(ConfigError) as info:
        load(tmp_path, users)
    assert says in str(info.value)
    assert f"trapd.yaml:{line}" in str(info.value)
    for secret in ("ab" * 20, "cd" * 24, "a passphrase"):
        assert secret not in str(info.value)


def test_key_material_from_files_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys are secrets like the passphrases: {file:}, {env:}; net-snmp's 0x form, or bare hex
    with colons between octets; the keys they make are the passphrase's."""
    ku = master("SHA-256", "auth", "file-user")
    kul = local("SHA-256", "priv", "file-user", SENDER, "AES-256")
    (tmp_path / "auth.key").write_text("0x" + ku.hex() + "\n")
    monkeypatch.setenv("TRAPD_TEST_PRIV_KUL", ":".join(f"{b:02X}" for b in kul))
    listener = load(
        tmp_path,
        "    - {user: file-user, auth_protocol: SHA-256, auth_key: {file: auth.key}, auth_key_type: master,\n"
        "       priv_protocol: AES-256, priv_key: {env: TRAPD_TEST_PRIV_KUL}, priv_key_type: localized,\n"
        f"       engine_ids: ['{SENDER}']}}\n",
    )
    (u,) = listener.v3_users
    assert (u.auth_key_type, u.priv_key_type, u.localized_for) == (
        "master",
        "localized",
        bytes.fromhex(SENDER),
    )
    assert u.keys_work_at(bytes.fromhex(SENDER)) and not u.keys_work_at(bytes.fromhex(TRAPD))
    keys = localized_user(u, bytes.fromhex(SENDER))
    assert keys.auth_key == localize_key(ku, bytes.fromhex(SENDER), "sha256")
    assert keys.priv_key == kul
    with pytest.raises(ValueError, match="localized for another engine"):
        localized_user(u, bytes.fromhex(TRAPD))
    assert ku.hex() not in repr(u) and kul.hex() not in repr(u)


@pytest.mark.parametrize(("auth", "x"), COMBOS, ids=[slug(a, x) for a, x in COMBOS])
def test_master_and_localized_keys_make_the_passphrases_keys(auth: str, x: str | None) -> None:
    """The keys a passphrase makes, given as its Ku or its Kul instead, are the same keys."""
    from trapd.listener.config import V3User
    from trapd.listener.v3.keys import password_to_key

    hash_name = AUTH_PROTOCOLS[auth][0]
    engine = bytes.fromhex(SENDER)
    priv = PRIVS[x]
    phrases = {"auth": f"auth-{auth}-phrase", "priv": f"priv-{auth}-{x}-phrase"}
    ku = {side: password_to_key(p.encode(), hash_name) for side, p in phrases.items()}

    def make(kind: str) -> V3User:
        def secret(side: str) -> Secret:
            if kind == "passphrase":
                return Secret(phrases[side])
            if kind == "master":
                return Secret("0x" + ku[side].hex())
            return Secret("0x" + localize_key(ku[side], engine, hash_name).hex())

        return V3User(
            "u",
            auth,
            secret("auth"),
            priv,
            secret("priv") if x else None,
            (engine,),
            kind,
            kind if x else "passphrase",
        )

    want = localized_user(make("passphrase"), engine)
    for kind in ("master", "localized"):
        got = localized_user(make(kind), engine)
        assert (got.auth_key, got.priv_key, got.des_pre_iv) == (want.auth_key, want.priv_key, want.des_pre_iv)


# -- real net-snmp senders, a real trapd listen -----------------------------------------------


@pytest.fixture(scope="module")
def trapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrapdListen]:
    users = []
    for auth, x in COMBOS:
        users.append(entry(auth, x, "master", SENDER, extended=False))  # traps and informs
        users.append(entry(auth, x, "localized", SENDER, extended=True))  # traps from SENDER
        users.append(entry(auth, x, "localized", TRAPD, extended=False))  # informs to trapd
    sender_only = entry("SHA", "AES", "localized", SENDER, extended=False)
    users.append(sender_only | {"user": "sender-only"})
    config = {
        "listener": {
            "v3_users": users,
            "engine_id": TRAPD,
            # every combination's snmpinform at once, from one address: over the shipped budget
            "rate_limit": {"v3_slow_per_source": 1000, "v3_slow_global": 1000},
        }
    }
    t = TrapdListen.start(tmp_path_factory.mktemp("v3-key-material"), config)
    yield t
    assert t.stop() == 0, t.log[-5:]


def run_all(
    tool: str, runs: list[tuple[str, list[str]]], target: str
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every sender at once (each alone would add its start-up time to the test's)."""
    import os

    env = dict(os.environ, MIBS="", MIBDIRS="/nonexistent", SNMPCONFPATH="/nonexistent")
    procs = {
        mark: subprocess.Popen(
            [tool, *args, target, *trap_args(mark)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for mark, args in runs
    }
    done = {}
    for mark, p in procs.items():
        out, err = p.communicate(timeout=60)
        done[mark] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return done


def marks_of(trapd: TrapdListen, want: set[str]) -> dict[str, dict[str, Any]]:
    got: dict[str, dict[str, Any]] = {}
    wanted = {m.encode().hex(): m for m in want}
    while set(got) != want:
        e = trapd.wait_event(lambda e: any(vb["value"] in wanted for vb in e.get("varbinds", ())), timeout=30)
        (mark,) = [wanted[vb["value"]] for vb in e["varbinds"] if vb["value"] in wanted]
        got[mark] = e
    return got


@needs_netsnmp
@pytest.mark.integration
@pytest.mark.parametrize("key_type", ["master", "localized"])
def test_netsnmp_traps_with_master_and_localized_keys(trapd: TrapdListen, key_type: str) -> None:
    """snmptrap -3m/-3M and -3k/-3K for every auth x priv pair: received (the fast path: the
    sender's engine is bound), with the user and level of its entry."""
    runs = [(f"trap-{key_type}-{slug(a, x)}", netsnmp_args(a, x, key_type, SENDER)) for a, x in COMBOS]
    results = run_all("snmptrap", runs, trapd.target())
    assert all(r.returncode == 0 for r in results.values()), {
        m: r.stderr for m, r in results.items() if r.returncode
    }
    for mark, e in marks_of(trapd, set(results)).items():
        assert (e["version"], e["kind"], e["security"]["engine_id"]) == ("v3", "trap", SENDER)
        assert e["security"]["user"] == f"{key_type[0]}-{mark.split('-', 2)[2]}"


@needs_netsnmp
@pytest.mark.integration
@pytest.mark.parametrize("key_type", ["master", "localized"])
def test_netsnmp_informs_with_master_and_localized_keys(trapd: TrapdListen, key_type: str) -> None:
    """snmpinform -3m/-3M and -3k/-3K (keys localized to trapd's engine ID) for every auth x priv
    pair: acknowledged (pysnmp's engine: trapd is the authoritative engine of an inform)."""
    runs = [(f"inform-{key_type}-{slug(a, x)}", netsnmp_args(a, x, key_type, TRAPD)) for a, x in COMBOS]
    results = run_all("snmpinform", [(m, [*args, "-r", "2", "-t", "5"]) for m, args in runs], trapd.target())
    assert all(r.returncode == 0 for r in results.values()), {
        m: r.stderr for m, r in results.items() if r.returncode
    }
    for _mark, e in marks_of(trapd, set(results)).items():
        assert (e["kind"], e["security"]["engine_id"]) == ("inform", TRAPD)


@needs_netsnmp
@pytest.mark.integration
def test_a_key_localized_for_a_sender_does_not_check_informs(trapd: TrapdListen) -> None:
    """A name whose only entry has a key localized for a trap sender's engine has no keys for
    trapd's engine: its inform is refused, and its sender is told so by a report (as net-snmp's
    snmptrapd tells a user it has no keys for), not left to time out."""
    before = trapd.stats()
    args = netsnmp_args("SHA", "AES", "localized", TRAPD)
    args[args.index("-u") + 1] = "sender-only"
    r = snmp_send("snmpinform", *args, "-r", "0", "-t", "3", trapd.target(), *trap_args("sender-only"))
    assert r.returncode != 0
    assert "Unknown user name" in r.stderr, r.stderr
    key = "unknown-user/no-keys-for-trapd-engine"
    now = trapd.wait_stats(lambda s: s["dropped_detail"].get(key, 0) > before["dropped_detail"].get(key, 0))
    assert now["v3_replies"] > before["v3_replies"]


@needs_netsnmp
@pytest.mark.integration
def test_no_key_shows_in_trapd_output(trapd: TrapdListen) -> None:
    """Not one key, in any of the forms above, in trapd's log lines: after its own traffic (a trap
    and an inform with each key type, and a refused inform), since under pytest-xdist the tests
    above may have run against the other process's trapd, and this one would check nothing."""
    runs = []
    for key_type in ("master", "localized"):
        runs.append((f"quiet-trap-{key_type}", netsnmp_args("SHA-256", "AES", key_type, SENDER)))
        runs.append((f"quiet-inform-{key_type}", [*netsnmp_args("SHA", "AES", key_type, TRAPD), "-r", "2"]))
    results = {
        **run_all("snmptrap", [r for r in runs if "trap" in r[0]], trapd.target()),
        **run_all("snmpinform", [r for r in runs if "inform" in r[0]], trapd.target()),
    }
    assert all(r.returncode == 0 for r in results.values()), {m: r.stderr for m, r in results.items()}
    marks_of(trapd, set(results))
    refused = netsnmp_args("SHA", "AES", "localized", TRAPD)
    refused[refused.index("-u") + 1] = "sender-only"
    snmp_send("snmpinform", *refused, "-r", "0", "-t", "2", trapd.target(), *trap_args("quiet-refused"))
    trapd.stats()
    text = "\n".join(map(str, trapd.log)).lower()
    for auth, x in COMBOS:
        for key_type in ("master", "localized"):
            name = f"{key_type[0]}-{slug(auth, x)}"
            for side in ("auth", "priv"):
                assert master(auth, side, name).hex() not in text
                for engine in (SENDER, TRAPD):
                    assert local(auth, side, name, engine).hex() not in text
                    assert local(auth, side, name, engine, x).hex() not in text
