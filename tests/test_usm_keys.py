"""USM keys: RFC 3414 A.3 vectors, pysnmp's localization for every protocol pair, AES key extension."""

from __future__ import annotations

import pytest
from usm_support import AUTHS, PRIVS, user

from trapd.listener.v3.usm import (
    AUTH_PROTOCOLS,
    PRIV_KEY_SIZES,
    extend_key_blumenthal,
    localize_key,
    localized_user,
    password_to_key,
)

# RFC 3414 A.3: password "maplesyrup", engine ID 00..02 (12 octets).
RFC_ENGINE = bytes.fromhex("000000000000000000000002")


def test_rfc3414_a31_md5_vector() -> None:
    ku = password_to_key(b"maplesyrup", "md5")
    assert ku.hex() == "9faf3283884e92834ebc9847d8edd963"
    assert localize_key(ku, RFC_ENGINE, "md5").hex() == "526f5eed9fcce26f8964c2930787d82b"


def test_rfc3414_a32_sha1_vector() -> None:
    ku = password_to_key(b"maplesyrup", "sha1")
    assert ku.hex() == "9fb5cc0381497b3793528939ff788d5d79145211"
    assert localize_key(ku, RFC_ENGINE, "sha1").hex() == "6695febc9288e36282235fc7151f128497b38f3f"


def test_password_stream_wraps_a_password_that_does_not_divide_1_mib() -> None:
    # "maplesyrup" is 10 octets: 1 MiB is not a whole number of them, so the
    # last copy is cut; the A.3 vectors above pin that. An empty one is refused.
    with pytest.raises(ValueError):
        password_to_key(b"", "sha1")


@pytest.mark.parametrize("auth", AUTHS)
def test_auth_keys_match_pysnmp(auth: str) -> None:
    from pysnmp.entity import config as pc
    from pysnmp.proto import rfc1902

    from trapd.listener.v3.adapters import pysnmp_protocols as _pysnmp_protocols

    engine = bytes.fromhex("80001f8880e9630000d61ff449")
    u = user("k", auth, "none", [engine], auth_key="a long auth passphrase")
    service = pc.AUTH_SERVICES[_pysnmp_protocols(u)[0]]
    expected = service.localize_key(
        service.hash_passphrase(b"a long auth passphrase"), rfc1902.OctetString(engine)
    )
    assert localized_user(u, engine).auth_key == bytes(expected)
    assert len(bytes(expected)) == len(localized_user(u, engine).auth_key)
    assert localized_user(u, engine).mac_length == AUTH_PROTOCOLS[auth][1]


@pytest.mark.parametrize("priv", PRIVS)
@pytest.mark.parametrize("auth", AUTHS)
def test_priv_keys_match_pysnmp(auth: str, priv: str) -> None:
    """The privacy key for every auth x priv pair equals pysnmp's: Blumenthal's extension for
    AES-192/256, Reeder's for AES-192-C/256-C (net-snmp's names for Cisco's variant)."""
    from pysnmp.entity import config as pc
    from pysnmp.proto import rfc1902

    from trapd.listener.v3.adapters import pysnmp_protocols as _pysnmp_protocols

    engine = bytes.fromhex("8000000001020304")
    u = user("k", auth, priv, [engine], priv_key="priv passphrase 1")
    auth_id, priv_id = _pysnmp_protocols(u)
    service = pc.PRIV_SERVICES[priv_id]
    master = service.hash_passphrase(auth_id, b"priv passphrase 1")
    expected = bytes(service.localize_key(auth_id, master, rfc1902.OctetString(engine)))[
        : PRIV_KEY_SIZES[priv]
    ]
    assert localized_user(u, engine).priv_key == expected


def test_blumenthal_and_reeder_differ_where_the_key_is_extended() -> None:
    """MD5 + AES-256 needs 16 more octets: the two drafts disagree, so the choice is observable."""
    from pysnmp.proto import rfc1902
    from pysnmp.proto.secmod.eso.priv import aes256
    from pysnmp.proto.secmod.rfc3414.auth import hmacmd5

    engine = rfc1902.OctetString(bytes.fromhex("8000000001020304"))
    master = password_to_key(b"privpass1", "md5")
    reeder = bytes(aes256.Aes256().localize_key(hmacmd5.HmacMd5.SERVICE_ID, master, engine))
    blumenthal = extend_key_blumenthal(localize_key(master, bytes(engine), "md5"), "md5", 32)
    assert reeder[:16] == blumenthal[:16] and reeder[16:] != blumenthal[16:]


def test_masters_are_hashed_once_per_password() -> None:
    engines = [bytes([0x80, 0, 0, 0, i]) for i in range(5)]
    u = user("many", "SHA-256", "AES-128", engines)
    masters: dict[tuple[str, str], bytes] = {}
    keys = {localized_user(u, e, masters).auth_key for e in engines}
    assert len(keys) == 5  # localized per engine
    assert len(masters) == 2  # one auth and one priv master
