"""The local broker's security: a CA and broker certificate, one SCRAM login per role, and the
ACLs that confine each role to its pipeline's topics and groups (docs/security.md).

Everything secret lives in the secrets directory, owner-only; the CA's key is dropped once it has
signed the broker's certificate. The passwords reach the broker through its properties file and
its format step through a Java argument file, never a command line.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dcpulse.kafka_clients import ROLES, SASL_MECHANISM, credentials_file
from dcpulse.private_files import write_private

BROKER_USER = "broker"  # the broker's own SCRAM login (inter-broker listener)
BROKER_CN = "dcpulse-broker"  # its certificate's subject: its principal on the controller listener
CERT_DAYS = 3650


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    # PKCS#8: the only unencrypted key form Kafka's PEM key store reads.
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def make_certificates(hosts: list[str], now: dt.datetime) -> tuple[str, str]:
    """(CA certificate, broker key + certificate chain) as PEM, for a broker reached as localhost
    or any of `hosts` (names or IP addresses)."""
    ca_key, broker_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    until = now + dt.timedelta(days=CERT_DAYS)
    ca = (x509.CertificateBuilder().subject_name(_name("dcpulse local CA")).issuer_name(_name("dcpulse local CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    broker = (x509.CertificateBuilder().subject_name(_name(BROKER_CN)).issuer_name(ca.subject)
              .public_key(broker_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now).not_valid_after(until)
              .add_extension(x509.SubjectAlternativeName(names), critical=False)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                    x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    return _pem_cert(ca), _pem_key(broker_key) + _pem_cert(broker) + _pem_cert(ca)


@dataclass(frozen=True)
class BrokerSecrets:
    """The secrets directory's files, as the broker's configuration names them."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def key_store(self) -> Path:
        return self.directory / "broker.pem"

    def login(self, user: str) -> dict[str, str]:
        return json.loads(credentials_file(self.directory, user).read_text())

    def ensure(self, hosts: list[str]) -> None:
        """Create what is missing: certificates once (for a broker reached as one of `hosts`), a
        random password per role and the broker."""
        if not self.key_store.exists():  # written last: it marks a complete pair
            ca_cert, broker = make_certificates(hosts, dt.datetime.now(dt.timezone.utc))
            write_private(self.ca, ca_cert)
            write_private(self.key_store, broker)
        for user in (*ROLES, BROKER_USER):
            path = credentials_file(self.directory, user)
            if not path.exists():
                # url-safe characters: nothing the format tool's [name=..,password=..] syntax parses
                write_private(path, json.dumps({"username": user, "password": secrets.token_urlsafe(24)}))

    def scram_arguments(self) -> list[str]:
        """`kafka-storage format` arguments creating every login (for an argument file, 0600)."""
        args: list[str] = []
        for user in (*ROLES, BROKER_USER):
            login = self.login(user)
            args += ["--add-scram", f"{SASL_MECHANISM}=[name={login['username']},password={login['password']}]"]
        return args

    def format_arguments(self, cluster_id: str, properties: Path) -> str:
        """The Java argument file's text for `kafka-storage format` of a broker with these
        properties, creating every login: the passwords never go on a command line."""
        return "\n".join(["format", "-t", cluster_id, "-c", str(properties), "--ignore-formatted",
                          *self.scram_arguments()]) + "\n"

    def server_properties(self, listeners: dict[str, tuple[str, str]], controller: str) -> dict[str, str]:
        """SASL_SSL on every client listener (`listeners`: name -> (bind, advertised) address; the
        first also carries inter-broker traffic), mutual TLS on the controller listener (bind
        address `controller`), the KRaft authorizer."""
        broker = self.login(BROKER_USER)
        jaas = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{broker["username"]}" password="{broker["password"]}";')
        names = list(listeners)
        return {
            "listeners": ",".join([*(f"{n}://{bind}" for n, (bind, _) in listeners.items()), f"CONTROLLER://{controller}"]),
            "advertised.listeners": ",".join(f"{n}://{advertised}" for n, (_, advertised) in listeners.items()),
            "listener.security.protocol.map": ",".join([*(f"{n}:SASL_SSL" for n in names), "CONTROLLER:SSL"]),
            "inter.broker.listener.name": names[0],
            "sasl.enabled.mechanisms": SASL_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SASL_MECHANISM,
            **{f"listener.name.{n.lower()}.scram-sha-512.sasl.jaas.config": jaas for n in names},
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.key_store),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca),
            # Only the broker holds a certificate our CA signed: nothing else talks to the quorum.
            "listener.name.controller.ssl.client.auth": "required",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:admin;User:{BROKER_USER};User:CN={BROKER_CN}",
            "allow.everyone.if.no.acl.found": "false",
        }
