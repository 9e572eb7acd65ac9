"""Apache Kafka in KRaft combined mode (one broker+controller), jars resolved from Maven Central."""

from __future__ import annotations

import base64
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from dcpulse import kafka_clients
from dcpulse.private_files import write_private
from dcpulse.services import cache
from dcpulse.services.kafka_security import BrokerSecrets
from dcpulse.services.process import ManagedProcess
from dcpulse.services.shell import port_open, run_logged
from dcpulse.settings import KafkaSettings, Settings

DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
# The kafka_2.13 POM only declares slf4j-api; 3.9.x logs through reload4j.
LOGGING_BACKEND = (
    ("org.slf4j", "slf4j-reload4j", "1.7.36"),
    ("ch.qos.reload4j", "reload4j", "1.2.25"),
)


def render_pom(kafka_version: str, scala_version: str) -> str:
    """A pom-packaging project whose runtime dependencies are exactly the broker's classpath."""
    deps = [("org.apache.kafka", f"kafka_{scala_version}", kafka_version), *LOGGING_BACKEND]
    dep_xml = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dcpulse.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{kafka_version}</version>
  <packaging>pom</packaging>
  <dependencies>
{dep_xml}
  </dependencies>
</project>
"""


def render_server_properties(settings: KafkaSettings, data_dir: Path, security: dict[str, str]) -> str:
    """The broker's properties; `security` (listeners, TLS, SASL, authorizer) replaces the
    plaintext listeners."""
    h = settings.host
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{h}:{settings.controller_port}",
        "listeners": f"PLAINTEXT://{h}:{settings.port},CONTROLLER://{h}:{settings.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{h}:{settings.port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "3",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "message.max.bytes": str(2 * 1024 * 1024),
        **security,
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


LOG4J_PROPERTIES = """log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
"""


def java_argv(settings: KafkaSettings, lib_dir: Path, conf_dir: Path, main: str, *args: str) -> list[str]:
    return [
        "java",
        f"-Xms{settings.heap_mb // 2}m",
        f"-Xmx{settings.heap_mb}m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{conf_dir / 'log4j.properties'}",
        "-cp",
        f"{lib_dir}/*",
        main,
        *args,
    ]


class KafkaServer:
    """Provision, configure, start and probe the local broker."""

    def __init__(self, all_settings: Settings) -> None:
        self.all_settings = all_settings
        settings = self.settings = all_settings.kafka
        cache_dir, state_dir = all_settings.services.cache_dir, all_settings.services.state_dir
        self.secrets = BrokerSecrets(all_settings.kafka_secrets_dir)
        self.home = cache.artefact_dir(cache_dir, "kafka", f"{settings.scala_version}-{settings.version}")
        self.state = state_dir / "kafka"
        self.conf_dir = self.state / "config"
        self.data_dir = self.state / "data"
        self.log_file = self.state / "kafka.log"
        self.process = ManagedProcess("kafka", self.state / "kafka.pid", marker=str(self.conf_dir))

    @property
    def lib_dir(self) -> Path:
        return self.home / "lib"

    def is_provisioned(self) -> bool:
        return cache.is_complete(self.home)

    def provision(self, log: Callable[[str], None]) -> None:
        """Resolve the broker's runtime classpath with Maven into the cache (about 30 s cold)."""
        if self.is_provisioned():
            return
        for tool in ("mvn", "java"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"`{tool}` is not on PATH: Kafka needs Maven and a JDK 17+")
        manifest = {"kafka": self.settings.version, "scala": self.settings.scala_version}
        with cache.building(self.home, manifest) as scratch:
            (scratch / "pom.xml").write_text(
                render_pom(self.settings.version, self.settings.scala_version)
            )
            cmd = [
                "mvn", "-B", "-q", f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime", f"-DoutputDirectory={scratch / 'lib'}",
            ]
            log("resolving Kafka jars from Maven Central")
            run_logged(cmd, cwd=scratch, log_file=scratch / "mvn.log")
            if not any((scratch / "lib").glob(f"kafka_{self.settings.scala_version}-*.jar")):
                raise RuntimeError(f"Maven finished but no kafka jar is in {scratch / 'lib'}")

    def configure(self) -> None:
        """Write config files and format the KRaft metadata log once, with every role's SCRAM
        login whatever the security setting (so it can be switched without a new format)."""
        s = self.settings
        self.secrets.ensure([s.host])
        secure = s.security == "sasl_ssl"
        security = self.secrets.server_properties({"SASL_SSL": (f"{s.host}:{s.port}",) * 2},
                                                  f"{s.host}:{s.controller_port}") if secure else {}
        # 0600: with security on it holds the broker's own password.
        write_private(self.conf_dir / "server.properties", render_server_properties(s, self.data_dir, security))
        (self.conf_dir / "log4j.properties").write_text(LOG4J_PROPERTIES)
        logins_marker = self.state / "scram-logins"
        if (self.data_dir / "meta.properties").exists():
            if secure and not logins_marker.exists():
                raise RuntimeError(f"the broker's data in {self.data_dir} was formatted without logins (before "
                                   "security was on): stop Kafka and delete that directory to start it fresh, "
                                   "or set kafka.security = \"plaintext\"")
            return
        arguments = self.conf_dir / "format.args"
        write_private(arguments, self.secrets.format_arguments(cluster_id(self.state / "cluster-id"),
                                                               self.conf_dir / "server.properties"))
        try:
            argv = java_argv(self.settings, self.lib_dir, self.conf_dir, "kafka.tools.StorageTool", f"@{arguments}")
            run_logged(argv, cwd=self.state, log_file=self.state / "format.log")
        finally:
            arguments.unlink()
        logins_marker.write_text("SCRAM logins created at format time\n")

    def start(self) -> int:
        argv = java_argv(
            self.settings, self.lib_dir, self.conf_dir, "kafka.Kafka",
            str(self.conf_dir / "server.properties"),
        )
        return self.process.start(argv, cwd=self.state, log_file=self.log_file)

    def is_healthy(self) -> bool:
        """The port answers and the broker serves metadata to an admin client."""
        if not port_open(self.settings.host, self.settings.port):
            return False
        from kafka.errors import KafkaError

        try:
            admin = kafka_clients.admin(kafka_clients.access(self.all_settings, "admin"), "dcpulse-health",
                                        request_timeout_ms=5000)
        except (KafkaError, OSError):
            return False
        try:
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()


def cluster_id(path: Path) -> str:
    """The cluster id kept in `path`, made on first use."""
    if not path.exists():
        path.write_text(_kafka_cluster_id() + "\n")
    return path.read_text().strip()


def _kafka_cluster_id() -> str:
    # KRaft wants a base64url-encoded 16-byte UUID, as `kafka-storage random-uuid` prints.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
