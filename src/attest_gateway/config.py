"""Settings: one pydantic-settings class, read from the environment by `load_settings()`.

Every knob has a safe default for the embedded single-machine setup. Nothing reads settings
at import time: the composition root calls `load_settings()` once and passes the result on.
"""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import (
    AwareDatetime,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from attest_gateway.contracts.envelope import Suite

#: The store pool's defaults: the settings' and `infra.db.engine.make_engine`'s (engines built
#: without settings: tools, tests, benchmarks).
DB_POOL_SIZE = 20
DB_MAX_OVERFLOW = 0
DB_POOL_TIMEOUT_SECONDS = 10.0

DAY = 24 * 3600.0  # seconds


def _items(value: str) -> list[str]:
    """The non-empty items of a comma-separated setting."""
    return [item.strip() for item in value.split(",") if item.strip()]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    environment: Literal["development", "production"] = Field(
        default="development",
        description="`production` refuses unsafe settings (see production.py)",
    )
    var_dir: Path = Field(default=Path("var"), description="state of the embedded setup")
    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy async URL; default SQLite under var_dir. The role the gateway runs as: "
            "on PostgreSQL it may only read and append the audit log (`attest-gateway db grant`)"
        ),
    )
    database_owner_url: str | None = Field(
        default=None,
        description=(
            "the owner role's URL, for `migrate`, `setup`, `prune` (the audit log's retention) "
            "and `db grant`; the operator's commands only, never the gateway's processes; "
            "unset: DATABASE_URL"
        ),
    )
    db_pool_size: int = Field(
        default=DB_POOL_SIZE,
        ge=1,
        description=(
            "database connections a process keeps open at most (opened when first needed); "
            "a request that finds them all busy waits for one"
        ),
    )
    db_max_overflow: int = Field(
        default=DB_MAX_OVERFLOW,
        ge=0,
        description=(
            "connections beyond DB_POOL_SIZE under a burst, closed again when returned (each "
            "costs PostgreSQL a new backend process: under sustained load they churn)"
        ),
    )
    db_pool_timeout_seconds: float = Field(
        default=DB_POOL_TIMEOUT_SECONDS,
        gt=0,
        description="how long a request waits for a free connection before a 503",
    )
    kafka_bootstrap_servers: str | None = Field(
        default=None, description="Kafka brokers; unset = start the embedded broker"
    )
    kafka_topic_prefix: str = Field(default="", description="prefix for all topic names")
    kafka_partitions: int = Field(
        default=6, description="partitions of the topics the gateway creates (checked: at least)"
    )
    kafka_replication_factor: int = Field(
        default=1,
        description="replicas of the gateway's topics (checked: at least; 3 on a cluster)",
    )
    kafka_min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        description=(
            "min.insync.replicas of the gateway's topics: replicas that must hold a record "
            "before the broker acknowledges it (at most KAFKA_REPLICATION_FACTOR); unset: "
            "demanded in production only, 2 when KAFKA_REPLICATION_FACTOR is 2 or more, else 1"
        ),
    )
    kafka_client_id: str = Field(default="attest-gateway", description="Kafka client id")
    kafka_idempotent_producer: bool = Field(
        default=False, description="enable with Apache Kafka; the embedded broker lacks it"
    )
    kafka_fetch_max_wait_ms: int = Field(
        default=50,
        ge=1,
        le=30_000,
        description=(
            "longest a consumer's fetch waits for records at the broker; the embedded one "
            "answers a waiting fetch about a quarter of this after records arrive, so an idle "
            "consumer sees a new record that much later (shorter: more idle CPU)"
        ),
    )
    delivery_partitions_at_once: bool = Field(
        default=True,
        description=(
            "deliver the records of a poll's partitions concurrently (each partition in order); "
            "false: one partition after the other"
        ),
    )
    delivery_poll_in_one_transaction: bool = Field(
        default=True,
        description=(
            "the delivery consumer delivers the new, valid records of a poll (all partitions) "
            "in one transaction; false: one transaction per record"
        ),
    )
    tracker_poll_in_one_transaction: bool = Field(
        default=True,
        description=(
            "the tracker applies all records of a poll in one transaction; false: one "
            "transaction per partition of the poll"
        ),
    )
    tracker_max_poll_records: int = Field(
        default=5000, ge=1, le=100_000, description="most stage events the tracker polls at once"
    )
    tracker_linger_seconds: float = Field(
        default=0.2,
        ge=0,
        le=5,
        description=(
            "after applying a poll the tracker waits this long before the next, so that the "
            "stage events of the next moments are applied in one transaction instead of one "
            "each (its figures are that much later; 0: poll again at once)"
        ),
    )
    tracker_consumers: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "tracker consumers in this process, members of one group that share the tracking "
            "topic's partitions: while one waits for the database another applies its poll "
            "(2 on PostgreSQL catch up a backlog faster, but send more statements per event at "
            "a live rate; no gain on SQLite: docs/decisions/0010-several-tracker-consumers.md)"
        ),
    )
    kafka_read_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="bound on every read of a topic (dead letters, audit, the canary's epoch)",
    )
    kafka_topic_check_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "production: how often /readyz reads the topics' settings from the broker again "
            "(a probe in between answers from the last reading)"
        ),
    )
    kafka_group_prefix: str = Field(default="attest-gateway", description="consumer group prefix")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL"] = Field(
        default="PLAINTEXT", description="SSL: TLS to the brokers (required in production)"
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None, description="PEM file of the CA(s) that signed the brokers' certificates"
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None, description="PEM client certificate (chain) when brokers require mTLS"
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, description="PEM private key of the Kafka client certificate"
    )
    api_host: str = Field(default="127.0.0.1", description="where the API listens")
    api_port: int = Field(default=8000, description="port of the API (and of /metrics, /readyz)")
    api_tls_certfile: Path | None = Field(
        default=None, description="PEM server certificate (chain): the API speaks HTTPS"
    )
    api_tls_keyfile: Path | None = Field(
        default=None, description="PEM private key of the API's server certificate"
    )
    api_tls_client_cafile: Path | None = Field(
        default=None,
        description="PEM CA(s) of client certificates: the API asks for one (mutual TLS) and "
        "authenticates the organisation it is pinned to; API keys keep working beside it",
    )
    trusted_proxies: str = Field(
        default="",
        description=(
            "addresses or CIDRs (comma-separated) of the proxies in front of the API: only "
            "their X-Forwarded-For and PROXY protocol headers name the client; empty: the TCP "
            "peer is the client and forwarded headers are ignored"
        ),
    )
    proxy_protocol: bool = Field(
        default=False,
        description=(
            "a connection from a TRUSTED_PROXIES address starts with a PROXY protocol header "
            "(v1 or v2; HAProxy `send-proxy-v2`) naming the client, before TLS; others connect "
            "directly"
        ),
    )
    require_acting_person: bool = Field(
        default=False,
        description=(
            "requests, replies and reads must name the person acting (`Attest-Actor`, 422 "
            "`actor-required` without it); unset, they may"
        ),
    )
    rate_limit_reads_per_second: float = Field(
        default=100.0,
        ge=0,
        description="reads (GET) an organisation may make per second, per process (0: no limit)",
    )
    rate_limit_writes_per_second: float = Field(
        default=100.0,
        ge=0,
        description="writes (POST, PUT, DELETE) an organisation may make per second, per process "
        "(0: no limit)",
    )
    rate_limit_reports_per_second: float = Field(
        default=20.0,
        ge=0,
        description="ministry reports a ministry may ask for per second, per process (0: no limit)",
    )
    rate_limit_burst_seconds: float = Field(
        default=10.0,
        gt=0,
        description="a burst of this many seconds' worth of requests is allowed at once "
        "(the token bucket's size)",
    )
    rate_limit_items_per_read: int = Field(
        default=1,
        ge=0,
        description="a read that hands out items (mailbox, inbox, lists) counts against "
        "RATE_LIMIT_READS_PER_SECOND as one read per this many items, at least one: a read of "
        "500 envelopes costs what 500 small reads cost. While it runs it is charged the items it "
        "asks for (`?limit=`), then what it handed out (0: every read counts as one)",
    )
    rate_limit_refusal_delay_seconds: float = Field(
        default=1.0,
        ge=0,
        description="a request refused for a rate or a cap on requests at once is answered 429 "
        "after about this pause (drawn between half and one and a half times it, so that a "
        "flood's connections do not come back in step; up to four times longer when more "
        "than 8 refusals of one credential wait at once; at most its Retry-After, which it "
        "shortens), so that a client sending again at once, whatever Retry-After says, slows "
        "down (0: at once)",
    )
    concurrent_requests_per_org: int = Field(
        default=8,
        ge=0,
        description="requests of one endpoint class (reads, writes, reports) an organisation "
        "may have in progress at once, per process (0: no limit)",
    )
    concurrent_requests_per_org_total: int = Field(
        default=12,
        ge=0,
        description="requests of all endpoint classes an organisation may have in progress at "
        "once, per process (0: no limit); below DB_POOL_SIZE, one organisation never holds "
        "every database connection",
    )
    auth_lockout_failures: int = Field(
        default=20,
        ge=0,
        description="failed authentications from one address within AUTH_LOCKOUT_WINDOW_SECONDS "
        "that lock the address out (0: never)",
    )
    auth_lockout_window_seconds: float = Field(
        default=60.0, gt=0, description="the window in which failed authentications are counted"
    )
    auth_lockout_seconds: float = Field(
        default=300.0,
        gt=0,
        description="how long a locked-out address is answered 429 authentication-locked-out",
    )
    metrics_token: SecretStr | None = Field(
        default=None, description="bearer token Prometheus must send to /metrics (production)"
    )
    readiness_timeout_seconds: float = Field(
        default=2.0, description="/readyz: how long each check (database, Kafka) may take"
    )
    keys_dir: Path | None = Field(default=None, description="default: var_dir/keys")
    pseudonym_key: SecretStr | None = Field(
        default=None, description="HMAC key for case refs; default: generated under keys_dir"
    )
    pkcs11_module: Path | None = Field(
        default=None,
        description=(
            "the PKCS#11 library of the token that holds the private keys (SoftHSM2: "
            "/usr/lib/softhsm/libsofthsm2.so); unset: key files in clear (development only)"
        ),
    )
    pkcs11_token_label: str = Field(
        default="attest-gateway", description="the label of the token in that library"
    )
    pkcs11_pin: SecretStr | None = Field(
        default=None, description="the token's user PIN (or PKCS11_PIN_FILE)"
    )
    pkcs11_pin_file: Path | None = Field(
        default=None, description="a file (mode 0600) holding the token's user PIN"
    )
    pkcs11_kek_label: str = Field(
        default="attest-gateway-kek",
        description=(
            "the label of the token's AES key-encryption key that wraps the HPKE private keys "
            "and the pseudonym key (made in the token, not extractable, when first needed)"
        ),
    )
    gateway_org_id: str = Field(default="gateway", description="the gateway's own organisation id")
    hpke_suite: Suite = Field(
        default="MLKEM768_X25519/HKDF_SHA256/AES_256_GCM",
        description="suite of the keys the gateway makes (`X25519/…` for legacy receivers)",
    )
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, description="larger request bodies get 413"
    )
    relay_batch_size: int = Field(
        default=500, description="outbox rows the relay publishes at once"
    )
    group_commit_max_requests: int = Field(
        default=64,
        ge=1,
        description=(
            "accepted attest requests written in one transaction at most (group commit: the "
            "writes of requests that arrive while one commits go together)"
        ),
    )
    group_commit_flushes: int = Field(
        default=4,
        ge=1,
        description="group-commit transactions of accepted requests under way at once",
    )
    relay_poll_seconds: float = Field(
        default=0.5, description="how often the relay looks for rows other processes wrote"
    )
    shutdown_grace_seconds: float = Field(
        default=10.0, description="how long in-flight work may take to finish on SIGTERM"
    )
    sweep_interval_seconds: float = Field(default=30.0, description="how often the sweeper runs")
    republish_after_seconds: float = Field(
        default=600.0, description="re-publish a message that reached no mailbox after this"
    )
    max_publish_attempts: int = Field(
        default=5,
        description="publications of a MedCom message not delivered before the sweeper stops "
        "republishing it (and retention may prune it)",
    )
    replay_window_seconds: float = Field(
        default=3600.0, description="after the broker lost its topics, replay this much outbox"
    )
    resend_after_seconds: float = Field(
        default=1800.0, description="MedCom: resend without acknowledgement after 30 minutes"
    )
    max_resends: int = Field(default=2, description="MedCom: at most two resends")
    outbox_max_pending: int = Field(
        default=50_000, description="above this many unpublished records the API answers 503"
    )
    # --- retention: how long each class of data is kept (docs/data-lifecycle.md gives the
    # reason for each default). Configuration, not claims about the law. ---
    outbox_retention_seconds: float = Field(
        default=7 * DAY,
        ge=0,
        description="an outbox record, after it was published and (a message) delivered",
    )
    mailbox_retention_seconds: float = Field(
        default=30 * DAY, ge=0, description="a mailbox entry, after its receiver collected it"
    )
    seen_ids_retention_seconds: float = Field(
        default=400 * DAY,
        ge=0,
        description=(
            "a seen MessageHeader.id and Bundle.id (replay detection) and a submission's first "
            "answer, after first seen; at least the mailbox's, the outbox's and "
            "medcom.messages' retention"
        ),
    )
    idempotency_retention_days: float = Field(
        default=30, ge=0, description="a job centre's Idempotency-Key and its answer"
    )
    sent_copy_retention_days: float = Field(
        default=14,
        ge=0,
        description="the gateway's sealed copy of a sent message, after it was acknowledged "
        "or given up (undeliverable)",
    )
    conversation_retention_days: float = Field(
        default=180,
        ge=0,
        description=(
            "a finished conversation (reply acknowledged, or undeliverable) with its stages, "
            "sent copies, idempotency records and mailbox entries, after it finished; open "
            "conversations are kept"
        ),
    )
    sealed_cpr_retention_days: float = Field(
        default=180,
        ge=0,
        description=(
            "a sealed CPR number (conversation: after it finished; registered contact: after "
            "it was registered); at most CONVERSATION_RETENTION_DAYS"
        ),
    )
    case_erasure_days: float = Field(
        default=30,
        ge=0,
        description=(
            "after a job centre closed a case, what identifies the citizen in it (sealed CPR "
            "number, sent copies, its conversations, the tracker's rows) is erased; the "
            "aggregates stay"
        ),
    )
    tracker_timeline_retention_days: float = Field(
        default=400,
        ge=0,
        description=(
            "the tracker's per-conversation timeline, episode and registered contact once "
            "decided (the aggregates are kept)"
        ),
    )
    audit_retention_days: float = Field(
        default=5 * 365,
        gt=0,
        description="an audit entry; removed only up to a signed checkpoint",
    )
    audit_checkpoint_entries: int = Field(
        default=1000, ge=1, description="a signed checkpoint of the audit chain after this many"
    )
    audit_checkpoint_seconds: float = Field(
        default=DAY,
        gt=0,
        description="a signed checkpoint of the audit chain at least this often (if it grew); "
        "less than AUDIT_RETENTION_DAYS",
    )
    kafka_messages_retention_days: int = Field(
        default=7,
        ge=-1,
        description="retention of medcom.messages, created so and checked (0 or -1: forever)",
    )
    kafka_tracking_retention_days: int = Field(
        default=7,
        ge=-1,
        description="retention of gateway.tracking, created so and checked (0 or -1: forever)",
    )
    kafka_dead_letter_retention_days: int = Field(
        default=30,
        ge=-1,
        description="retention of gateway.dead-letter, created so and checked (0 or -1: forever)",
    )
    kafka_audit_retention_days: int = Field(
        default=400,
        ge=-1,
        description="retention of gateway.audit, created so and checked (0 or -1: forever)",
    )
    prune_batch_size: int = Field(
        default=500, ge=1, description="rows deleted per transaction when pruning"
    )
    retention_pause_seconds: float = Field(
        default=0.01,
        ge=0,
        le=10,
        description="pause between retention's batches, so that a long pass yields the "
        "database and the CPU to the API between its transactions",
    )
    retention_duty: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="the share of its time a retention pass may be busy: after a batch that "
        "took t seconds it pauses t × (1 − duty) / duty (at least RETENTION_PAUSE_SECONDS), "
        "so it leaves the database and the CPU to the API; 1: no pause beyond the minimum",
    )
    consumer_max_retries: int = Field(
        default=5, description="tries of a transiently failing record before the dead-letter topic"
    )
    consumer_retry_base_seconds: float = Field(
        default=0.2, description="first backoff between those tries (doubles each time)"
    )
    simulated_clock_start: AwareDatetime | None = Field(
        default=None,
        description=(
            "development only: the gateway's clock starts at this instant (ISO 8601 with an "
            "offset) and runs SIMULATED_CLOCK_SPEED times faster than real time, as the "
            "simulator runs it; unset: the machine's clock"
        ),
    )
    simulated_clock_speed: float = Field(
        default=1.0,
        gt=0,
        description="how many times faster than real time the simulated clock runs",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: JSON in production or when not on a terminal"
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    # --- the tracker (tracker): deadlines, reminders, contact, ministry view ---
    tracker_enabled: bool = Field(default=True, description="run the tracker consumer and sweep")
    tracker_timezone: str = Field(
        default="Europe/Copenhagen",
        description="the time zone of the tracker's days, weeks and deadlines",
    )
    tracker_sweep_seconds: float = Field(
        default=60.0, description="how often overdue requests and contact windows are checked"
    )
    tracker_decisions_seconds: float = Field(
        default=300.0,
        description="how often the disclosure decisions of the large report cubes (the receiver"
        " drill-down's, the geography's) are made again when their counts changed and published"
        " with their figures; a report answers from the published one, as of when it was made."
        " 0: never, and what was published is removed (every report decides its cube when"
        " asked)",
        ge=0,
    )
    tracker_deadlines: dict[str, str] = Field(
        default_factory=dict,
        description='per LÆ type, overrides of the default reply deadlines, e.g. {"LÆ 285": "8d"}'
        " (d = calendar days, wd = Danish working days, w = weeks, m = months; @receipt counts"
        " from delivery instead of the request)",
    )
    tracker_deadline_next_working_day: bool = Field(
        default=True, description="a deadline on a weekend or public holiday moves to the next"
    )
    tracker_reminder_max: int = Field(default=2, description="reminders per overdue request")
    tracker_reminder_interval_days: int = Field(
        default=7, description="days between two reminders of an overdue request"
    )
    tracker_late_request_weeks: dict[str, int] = Field(
        default_factory=lambda: {"sygedagpenge": 8},
        description="a request after the end of this week of absence is late, per case kind",
    )
    tracker_contact_window_weeks: int = Field(
        default=8,
        description="weeks from the first day of absence in which a direct contact with "
        "psychiatry counts for contact coverage",
    )
    tracker_contact_case_kinds: tuple[str, ...] = Field(
        default=("sygedagpenge", "jobafklaringsforloeb"),
        description="the case kinds whose citizens with a psychiatric course count for contact "
        "coverage",
    )
    tracker_contact_baseline: float = Field(
        default=0.25,
        description="the contact coverage the ministry's figures are compared with (the audit's "
        "25 %)",
    )
    tracker_contact_counts: tuple[str, ...] = Field(
        default=("meeting", "phone", "video", "written", "other", "attest"),
        description="what counts as direct contact for coverage over registered cases: "
        "registered contacts by channel (meeting, phone, video, written, other), attest (a "
        "request to psychiatry answered with an attest) and request (any request sent to "
        "psychiatry, even unanswered: off by default)",
    )
    tracker_no_contact_baseline: float = Field(
        default=0.75,
        description="the share of cases with a psychiatric course and no direct contact that "
        "the audit found (75 %), the coverage report's baseline",
    )
    tracker_no_contact_target: float = Field(
        default=0.5,
        description="the target line of the share without direct contact",
    )
    tracker_min_cell_citizens: int = Field(
        default=5, description="aggregate cells with fewer citizens are suppressed"
    )
    tracker_rehab_health_information: tuple[tuple[str, ...], ...] = Field(
        default=(("LÆ 265",), ("LÆ 155", "LÆ 105", "LÆ 115")),
        description="the health information a ressourceforløb case needs for its "
        "rehabilitation team, a JSON list of groups: the case is complete when every group "
        "has an attest of one of its types (default: LÆ 265, and LÆ 155, 105 or 115)",
    )

    # --- webhooks (services/webhooks.py): push notifications to the organisations ---
    webhooks_enabled: bool = Field(
        default=True, description="run the webhook dispatcher and sender (with the consumers)"
    )
    webhook_retry_hours: float = Field(
        default=24.0, gt=0, description="retry a delivery this long, then mark it failed"
    )
    webhook_backoff_base_seconds: float = Field(
        default=5.0, gt=0, description="the first retry waits up to this (doubling, with jitter)"
    )
    webhook_backoff_max_seconds: float = Field(
        default=3600.0, gt=0, description="the longest wait between two attempts"
    )
    webhook_connect_timeout_seconds: float = Field(
        default=5.0, gt=0, description="connecting to an endpoint (TCP and TLS) takes at most this"
    )
    webhook_read_timeout_seconds: float = Field(
        default=10.0, gt=0, description="an endpoint answers within this, or the attempt failed"
    )
    webhook_max_in_flight: int = Field(
        default=4, ge=1, description="attempts under way at once per endpoint (per process)"
    )
    webhook_breaker_failures: int = Field(
        default=5, ge=1, description="failures in a row that open an endpoint's circuit"
    )
    webhook_breaker_open_seconds: float = Field(
        default=60.0, gt=0, description="how long an open circuit sends nothing to its endpoint"
    )
    webhook_poll_seconds: float = Field(
        default=1.0, gt=0, description="how often the sender looks for due deliveries"
    )
    webhook_rotation_overlap_hours: float = Field(
        default=24.0, ge=0, description="after a secret's rotation the old one signs this long too"
    )
    webhook_log_retention_seconds: float = Field(
        default=30 * 24 * 3600.0,
        gt=0,
        description="delivered and failed webhook deliveries stay in the log this long",
    )
    webhook_ca_file: Path | None = Field(
        default=None,
        description="CA bundle endpoints' certificates are checked against; unset: the system's",
    )
    webhook_client_cert: Path | None = Field(
        default=None, description="the gateway's client certificate for mutual TLS to endpoints"
    )
    webhook_client_key: Path | None = Field(default=None, description="its private key (PEM)")
    long_poll_max_waiters: int = Field(
        default=200,
        ge=0,
        description="long-polls (`?wait=`) waiting at once per process; one more answers at once",
    )
    long_poll_check_seconds: float = Field(
        default=0.2,
        gt=0,
        le=5,
        description="how often a long-poll looks for mail delivered by another process",
    )

    @field_validator("tracker_rehab_health_information")
    @classmethod
    def _rehab_groups(cls, value: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
        if not value or not all(value):
            raise ValueError("name at least one group, each of at least one attest type")
        return value

    @field_validator("tracker_contact_counts")
    @classmethod
    def _known_contact_sources(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = ("meeting", "phone", "video", "written", "other", "attest", "request")
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"unknown contact source(s) {unknown}: each is one of {list(known)}")
        return value

    @field_validator("kafka_min_insync_replicas")
    @classmethod
    def _insync_within_replicas(cls, value: int | None, info: ValidationInfo) -> int | None:
        replicas = info.data.get("kafka_replication_factor")
        if value is not None and isinstance(replicas, int) and value > replicas:
            raise ValueError(
                f"{value} is more than KAFKA_REPLICATION_FACTOR ({replicas}): the broker "
                "would refuse every write"
            )
        return value

    @model_validator(mode="after")
    def _retentions_agree(self) -> Settings:
        """The retention periods that depend on each other (docs/data-lifecycle.md)."""
        problems: list[str] = []
        seen = self.seen_ids_retention_seconds
        for name, seconds in (
            ("MAILBOX_RETENTION_SECONDS", self.mailbox_retention_seconds),
            ("OUTBOX_RETENTION_SECONDS", self.outbox_retention_seconds),
            ("KAFKA_MESSAGES_RETENTION_DAYS", max(self.kafka_messages_retention_days, 0) * DAY),
        ):
            if seen < seconds:
                problems.append(
                    f"SEEN_IDS_RETENTION_SECONDS ({seen:g}) is shorter than {name} ({seconds:g} "
                    "s): a message redelivered from there would no longer be known"
                )
        if self.sealed_cpr_retention_days > self.conversation_retention_days:
            problems.append(
                "SEALED_CPR_RETENTION_DAYS is longer than CONVERSATION_RETENTION_DAYS: the "
                "sealed CPR number goes with its conversation"
            )
        if self.audit_checkpoint_seconds >= self.audit_retention_days * DAY:
            problems.append(
                "AUDIT_CHECKPOINT_SECONDS is not shorter than AUDIT_RETENTION_DAYS: no checkpoint "
                "would be old enough to prune up to"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property  # not cached: a copy with another environment (model_copy) must not keep it
    def effective_min_insync_replicas(self) -> int | None:
        """The `min.insync.replicas` the gateway's topics must have, or None where it is not
        demanded (development, unless set): with acks=all a record is acknowledged only once
        that many replicas hold it, so a broker lost right after the acknowledgement loses
        nothing. Two when there are two replicas or more: with two, a broker down stops writes
        (the outbox keeps them) instead of acknowledging records one broker alone holds."""
        if self.kafka_min_insync_replicas is not None:
            return self.kafka_min_insync_replicas
        if self.environment != "production":
            return None
        return 2 if self.kafka_replication_factor >= 2 else 1

    @cached_property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.var_dir / 'gateway.db').as_posix()}"

    @property
    def effective_owner_database_url(self) -> str:
        """The URL the operator's commands that change the schema or remove audit entries use."""
        return self.database_owner_url or self.effective_database_url

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: str) -> str:
        for item in _items(value):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR") from None
        return value

    @cached_property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """TRUSTED_PROXIES as networks (an address is a network of one)."""
        return tuple(ipaddress.ip_network(i, strict=False) for i in _items(self.trusted_proxies))

    @cached_property
    def effective_keys_dir(self) -> Path:
        return self.keys_dir if self.keys_dir is not None else self.var_dir / "keys"

    def topic(self, name: str) -> str:
        return f"{self.kafka_topic_prefix}{name}"


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]


# --- where the key files live (paths only: reading and making them is the composition root's
# job, bootstrap.py). Here because the production checks, the operator commands and the
# bootstrap all need them, and they follow from the settings alone.


def custodial_keys_dir(settings: Settings) -> Path:
    """The private key files of the gateway and of the custodial organisations."""
    return settings.effective_keys_dir / "custodial"


def pseudonym_key_file(settings: Settings) -> Path:
    """Where the generated pseudonym key lives when PSEUDONYM_KEY is not set."""
    return settings.effective_keys_dir / "pseudonym.key"


def staged_key_file(settings: Settings) -> Path:
    """A re-key writes the new generated key here first (see infra/db/rekey.py)."""
    return pseudonym_key_file(settings).with_name("pseudonym.key.new")
