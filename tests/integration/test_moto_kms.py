"""KMS keys behind :mod:`trashsorter_cli.local.moto_kms` answer as moto's own: a symmetric key encrypts and
decrypts with its own material, and an asymmetric key, whose pair is made when first used, signs, verifies
and hands out its public key, for RSA and elliptic-curve specs alike; a replica shares its primary's pair."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import load_der_public_key
from moto import mock_aws

from tests.support.stack import REGION
from trashsorter_cli.local import moto_kms

MESSAGE = b"a photo's sha256, signed"


@pytest.fixture(params=["moto's own", "pair on first use"])
def kms(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "moto's own":
        moto_kms.uninstall()
    else:
        moto_kms.install()
    try:
        with mock_aws():
            yield boto3.client("kms", region_name=REGION)
    finally:
        moto_kms.install()  # the tests after this one run with the patch, as every run does


def test_a_symmetric_key_encrypts_and_decrypts(kms: Any) -> None:
    key = kms.create_key(Description="stack key")["KeyMetadata"]
    assert key["KeySpec"] == "SYMMETRIC_DEFAULT"
    sealed = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"queue message")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=sealed)["Plaintext"] == b"queue message"
    data_key = kms.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256")
    assert kms.decrypt(CiphertextBlob=data_key["CiphertextBlob"])["Plaintext"] == data_key["Plaintext"]


@pytest.mark.parametrize(
    ("spec", "algorithm", "kind", "bits"),
    [
        ("RSA_2048", "RSASSA_PSS_SHA_256", rsa.RSAPublicKey, 2048),
        ("RSA_3072", "RSASSA_PKCS1_V1_5_SHA_256", rsa.RSAPublicKey, 3072),
        ("ECC_NIST_P256", "ECDSA_SHA_256", ec.EllipticCurvePublicKey, 256),
    ],
)
def test_an_asymmetric_key_signs_verifies_and_gives_its_public_key(
    kms: Any, spec: str, algorithm: str, kind: type, bits: int
) -> None:
    key_id = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec=spec)["KeyMetadata"]["KeyId"]
    signature = kms.sign(KeyId=key_id, Message=MESSAGE, SigningAlgorithm=algorithm)["Signature"]
    verified = kms.verify(KeyId=key_id, Message=MESSAGE, Signature=signature, SigningAlgorithm=algorithm)
    assert verified["SignatureValid"] is True
    forged = kms.verify(KeyId=key_id, Message=MESSAGE + b"!", Signature=signature, SigningAlgorithm=algorithm)
    assert forged["SignatureValid"] is False
    public = load_der_public_key(kms.get_public_key(KeyId=key_id)["PublicKey"])
    assert isinstance(public, kind) and public.key_size == bits
    # the public key KMS hands out is the pair that signed (checked outside KMS)
    if isinstance(public, rsa.RSAPublicKey) and algorithm.startswith("RSASSA_PSS"):
        public.verify(
            signature,
            MESSAGE,
            padding.PSS(mgf=padding.MGF1(SHA256()), salt_length=padding.PSS.AUTO),
            SHA256(),
        )
    elif isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, MESSAGE, ec.ECDSA(SHA256()))


def test_a_replica_signs_with_its_primarys_pair(kms: Any) -> None:
    primary = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="RSA_2048", MultiRegion=True)["KeyMetadata"]
    replica = kms.replicate_key(KeyId=primary["KeyId"], ReplicaRegion="eu-west-1")["ReplicaKeyMetadata"]
    there = boto3.client("kms", region_name="eu-west-1")
    assert (
        there.get_public_key(KeyId=replica["KeyId"])["PublicKey"]
        == (kms.get_public_key(KeyId=primary["KeyId"])["PublicKey"])
    )
