"""The node's Ed25519 identity and its did:key node id."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from cryptography.hazmat.primitives import serialization

from node.core.errors import ConfigError, InvalidInput
from node.core.identity import (b58decode, b58encode, create_identity, load_identity, node_id_for,
                                public_key_from_node_id, verify)


def test_a_new_key_is_written_with_mode_0600_and_loads_back(tmp_path: Path) -> None:
    identity = create_identity(tmp_path / "node.key")
    assert stat.S_IMODE((tmp_path / "node.key").stat().st_mode) == 0o600
    assert load_identity(tmp_path / "node.key").node_id == identity.node_id


def test_an_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    create_identity(tmp_path / "node.key")
    before = (tmp_path / "node.key").read_bytes()
    with pytest.raises(FileExistsError):
        create_identity(tmp_path / "node.key")
    assert (tmp_path / "node.key").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["node.key"]  # no temp file left behind


def test_the_node_id_is_a_did_key_that_carries_the_public_key(tmp_path: Path) -> None:
    identity = create_identity(tmp_path / "node.key")
    assert identity.node_id.startswith("z6Mk")
    recovered = public_key_from_node_id(identity.node_id)
    assert node_id_for(recovered) == identity.node_id


def test_signatures_verify_against_the_node_id_only_for_the_signed_bytes(tmp_path: Path) -> None:
    identity = create_identity(tmp_path / "node.key")
    signature = identity.sign(b"entry 1")
    assert verify(identity.node_id, b"entry 1", signature)
    assert not verify(identity.node_id, b"entry 2", signature)
    other = node_id_for(Ed25519PrivateKey.generate().public_key())
    assert not verify(other, b"entry 1", signature)
    assert not verify("not-a-node-id", b"entry 1", signature)


@pytest.mark.parametrize("text", ["abc", "z0OIl", "z" + b58encode(b"\x12\x00" + bytes(32))])
def test_strings_that_are_not_node_ids_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        public_key_from_node_id(text)


def test_base58_round_trips_leading_zeros() -> None:
    for data in (b"", b"\0", b"\0\0\x01", bytes(range(40))):
        assert b58decode(b58encode(data)) == data


def test_a_key_file_holding_another_kind_of_key_is_a_config_error(tmp_path: Path) -> None:
    rsa = generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "node.key"
    path.write_bytes(rsa.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="identity.key_file: .* holds a .*RSA.*not an Ed25519 key"):
        load_identity(path)
