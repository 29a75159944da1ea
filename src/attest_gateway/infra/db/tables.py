"""Table definitions (SQLAlchemy Core). The Alembic migrations must produce exactly these;
a test compares them."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Timestamp = sa.DateTime(timezone=True)

organisations = sa.Table(
    "organisations",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("sor", sa.String(18), nullable=True, unique=True),
    sa.Column("gln", sa.String(13), nullable=True, unique=True),
    sa.Column("kommunekode", sa.String(3), nullable=True),
    sa.Column("ydernummer", sa.String(6), nullable=True, unique=True),
    sa.Column("region_code", sa.String(4), nullable=True),
    sa.Column("api_key_hash", sa.String(64), nullable=True, unique=True),
    sa.Column("custodial", sa.Boolean, nullable=False, default=False),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("webhook_url", sa.String(500), nullable=True),
    # json | xml: the FHIR format sealed into its envelopes (core/directory.py MessageFormat)
    sa.Column("message_format", sa.String(8), nullable=False, server_default="json"),
)

org_keys = sa.Table(
    "org_keys",
    metadata,
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("org_id", sa.String(64), sa.ForeignKey("organisations.id"), nullable=False),
    sa.Column("purpose", sa.String(16), nullable=False),  # hpke | signing
    sa.Column("algorithm", sa.String(64), nullable=False),  # HPKE suite or "Ed25519"
    sa.Column("public_key", sa.Text, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("not_after", Timestamp, nullable=True),
    sa.Column("revoked_at", Timestamp, nullable=True),
    sa.Index(None, "org_id", "purpose"),
)

# One row (id 1): a random token that triggers on `organisations` and `org_keys` replace on
# every write (migration 0008). The gateway's in-memory directory snapshot is current exactly
# while its token equals this one (infra/db/directory.py).
directory_generation = sa.Table(
    "directory_generation",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("token", sa.String(32), nullable=False),
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("jobcenter_org_id", sa.String(64), sa.ForeignKey("organisations.id"), nullable=False),
    sa.Column("receiver_org_id", sa.String(64), sa.ForeignKey("organisations.id"), nullable=False),
    sa.Column("request_message_id", sa.String(64), nullable=False, unique=True),
    sa.Column("attest_type", sa.String(16), nullable=False),
    sa.Column("case_kind", sa.String(32), nullable=False),
    sa.Column("caseworker_ref", sa.String(64), nullable=False),
    sa.Column("municipality", sa.String(3), nullable=False),
    sa.Column("region_code", sa.String(4), nullable=False),
    sa.Column("case_ref", sa.String(64), nullable=False),
    sa.Column("psychiatric_course", sa.Boolean, nullable=False),
    sa.Column("first_day_of_absence", sa.Date, nullable=False),
    sa.Column("reply_deadline", sa.Date, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    # the CPR number sealed to the gateway's own HPKE key, to re-key pseudonyms (0007)
    sa.Column("citizen_sealed", sa.Text, nullable=True),
    sa.Index(None, "jobcenter_org_id", "created_at"),
    # a closed case's erasure finds the citizen's conversations by case ref (migration 0019)
    sa.Index(None, "case_ref"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("org_id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("conversation_id", sa.String(64), nullable=False),
    sa.Column("response", sa.Text, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Index(None, "conversation_id"),  # removed with its conversation (migration 0019)
)

# Messages accepted from a sender at the API (MedCom duplicate detection on MessageHeader.id
# and Bundle.id together); `response` is the answer given the first time, repeated verbatim.
inbound_messages = sa.Table(
    "inbound_messages",
    metadata,
    sa.Column("message_id", sa.String(64), primary_key=True),
    sa.Column("bundle_id", sa.String(64), nullable=False, unique=True),
    sa.Column("sender_org_id", sa.String(64), nullable=False),
    sa.Column("conversation_id", sa.String(64), nullable=False),
    sa.Column("message_type", sa.String(32), nullable=False),
    sa.Column("response", sa.Text, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Index(None, "conversation_id"),  # removed with its conversation (migration 0019)
)

# Every MessageHeader.id (kind `message`, with its routing) and Bundle.id (kind `bundle`, with
# its MessageHeader.id) that reached a mailbox (migration 0014). Kept longer than the mailbox
# rows, so that an id reused after its mailbox row was pruned is still known as a replay.
seen_ids = sa.Table(
    "seen_ids",
    metadata,
    sa.Column("kind", sa.String(8), primary_key=True),  # message | bundle
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("message_id", sa.String(64), nullable=False),
    sa.Column("sender_org_id", sa.String(64), nullable=False),
    sa.Column("receiver_org_id", sa.String(64), nullable=False),
    sa.Column("conversation_id", sa.String(64), nullable=False),
    sa.Column("message_type", sa.String(32), nullable=False),
    sa.Column("first_seen_at", Timestamp, nullable=False),
    sa.Index(None, "first_seen_at"),
)

# Cases a job centre closed (`POST /jobcenter/v1/cases/close`, migration 0014): after
# `erase_after`, retention erases what identifies the citizen in the case's conversations and
# the tracker's rows, and clears `case_ref` here (`erased_at` set).
case_closures = sa.Table(
    "case_closures",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("jobcenter_org_id", sa.String(64), nullable=False),
    sa.Column("case_kind", sa.String(32), nullable=False),
    sa.Column("case_ref", sa.String(64), nullable=True),
    sa.Column("conversations", sa.Integer, nullable=False),
    sa.Column("closed_at", Timestamp, nullable=False),
    sa.Column("erase_after", Timestamp, nullable=False),
    sa.Column("erased_at", Timestamp, nullable=True),
    sa.UniqueConstraint("jobcenter_org_id", "case_ref", "case_kind"),
    sa.Index(None, "erased_at", "erase_after"),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.String(200), nullable=False),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("headers", sa.Text, nullable=False),
    sa.Column("message_id", sa.String(64), nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("published_at", Timestamp, nullable=True),
    # how often the relay published it (the sweeper re-publishes what never arrived)
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    # set by the delivery consumer when the message reached its mailbox
    sa.Column("delivered_at", Timestamp, nullable=True),
    # the relay that leased the row for publishing, and until when
    sa.Column("claim_token", sa.String(32), nullable=True),
    sa.Column("claimed_until", Timestamp, nullable=True),
    sa.Index(None, "published_at", "id"),
    sa.Index(None, "message_id"),
    sa.Index(None, "claim_token"),
    # a closed case's erasure removes its conversations' records by key (migration 0019)
    sa.Index(None, "key"),
)

mailbox = sa.Table(
    "mailbox",
    metadata,
    sa.Column("message_id", sa.String(64), primary_key=True),
    sa.Column("receiver_org_id", sa.String(64), nullable=False),
    sa.Column("sender_org_id", sa.String(64), nullable=False),
    sa.Column("conversation_id", sa.String(64), nullable=False),
    sa.Column("message_type", sa.String(32), nullable=False),
    sa.Column("envelope", sa.LargeBinary, nullable=False),
    sa.Column("delivered_at", Timestamp, nullable=False),
    sa.Column("fetched_at", Timestamp, nullable=True),
    sa.Column("collected_at", Timestamp, nullable=True),
    # set when the gateway could not open a job centre's reply (migration 0013): the inbox
    # hands out the readable ones first and names this one, with the error code
    sa.Column("unreadable_at", Timestamp, nullable=True),
    sa.Column("unreadable_reason", sa.String(64), nullable=True),
    sa.Index(None, "receiver_org_id", "collected_at", "delivered_at"),
    sa.Index(None, "conversation_id"),  # removed with its conversation (migration 0019)
)

stages = sa.Table(
    "stages",
    metadata,
    sa.Column("conversation_id", sa.String(64), primary_key=True),
    sa.Column("stage", sa.String(32), primary_key=True),
    sa.Column("message_id", sa.String(64), nullable=False),
    sa.Column("at", Timestamp, nullable=False),
    sa.Column("detail", sa.String(200), nullable=True),
    # retention walks the finished conversations by their final stage, a cursor on (time,
    # conversation id) carried from batch to batch (migrations 0014, 0019)
    sa.Index(None, "stage", "at", "conversation_id"),
)

# What a job centre did to its request after sending it (migration 0017): a cancellation
# (key ""), a deadline extension (key: the new deadline), a reminder by hand (key: the day, so
# at most one a day). The key makes each naturally idempotent.
request_actions = sa.Table(
    "request_actions",
    metadata,
    sa.Column("conversation_id", sa.String(64), primary_key=True),
    sa.Column("action", sa.String(16), primary_key=True),
    sa.Column("key", sa.String(32), primary_key=True),
    sa.Column("id", sa.String(64), nullable=False),  # the message sent, or the action's own id
    sa.Column("at", Timestamp, nullable=False),
    sa.Column("detail", sa.String(200), nullable=True),
    sa.Column("idempotency_key", sa.String(200), nullable=True),
)

# --- reliability (migration 0003) ------------------------------------------------------------

# Short leases that let one of several processes do a job alone (e.g. recovering the broker).
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("until", Timestamp, nullable=False),
)

# Messages the gateway sent on behalf of a custodial organisation and that await a MedCom
# acknowledgement. `copy` is the same Bundle sealed for the gateway's own key, so that a
# resend can carry a new Bundle.id under the same MessageHeader.id.
sent_messages = sa.Table(
    "sent_messages",
    metadata,
    sa.Column("message_id", sa.String(64), primary_key=True),
    sa.Column("conversation_id", sa.String(64), nullable=False),
    sa.Column("sender_org_id", sa.String(64), nullable=False),
    sa.Column("receiver_org_id", sa.String(64), nullable=False),
    sa.Column("message_type", sa.String(32), nullable=False),
    sa.Column("copy", sa.LargeBinary, nullable=False),
    sa.Column("sent_at", Timestamp, nullable=False),
    sa.Column("last_sent_at", Timestamp, nullable=False),
    sa.Column("resend_count", sa.Integer, nullable=False, default=0),
    sa.Column("acknowledged_at", Timestamp, nullable=True),
    sa.Column("undeliverable_at", Timestamp, nullable=True),
    sa.Index(None, "acknowledged_at", "undeliverable_at", "last_sent_at"),
    sa.Index(None, "conversation_id"),  # removed with its conversation (migration 0019)
)

# Columns that hold ciphertext (sealed envelopes, the gateway's sealed copies, sealed CPR
# numbers). On PostgreSQL they are stored EXTERNAL (migration 0012): out of line when large,
# never compressed. Ciphertext does not compress, but an envelope's JSON header does a little,
# so PostgreSQL's pglz went on through the whole value before it gave up
# (docs/decisions/0005-uncompressed-sealed-columns.md).
SEALED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("outbox", "value"),
    ("mailbox", "envelope"),
    ("sent_messages", "copy"),
    ("conversations", "citizen_sealed"),
    ("tracker_contacts", "citizen_sealed"),
    ("tracker_cases", "citizen_sealed"),
    ("tracker_treatments", "citizen_sealed"),
)

# --- tracker (migration 0002) ----------------------------------------------------------------
# The tracker's own state, fed only by `gateway.tracking` events and its sweep. Citizens appear
# only as case refs (keyed pseudonyms); no CPR number and no message text is ever stored here.

# One row per conversation: metadata from its stage events, the first time of each stage, the
# tracker's effective deadline and its flags.
tracker_conversations = sa.Table(
    "tracker_conversations",
    metadata,
    sa.Column("conversation_id", sa.String(64), primary_key=True),
    sa.Column("attest_type", sa.String(16), nullable=False),
    sa.Column("case_kind", sa.String(32), nullable=False),
    sa.Column("municipality", sa.String(3), nullable=False),
    sa.Column("region_code", sa.String(4), nullable=False),
    sa.Column("jobcenter_org", sa.String(64), nullable=False),
    sa.Column("receiver_org", sa.String(64), nullable=False),
    sa.Column("receiver_role", sa.String(32), nullable=True),
    sa.Column("case_ref", sa.String(64), nullable=False),
    sa.Column("psychiatric_course", sa.Boolean, nullable=False),
    sa.Column("first_day_of_absence", sa.Date, nullable=False),
    sa.Column("request_deadline", sa.Date, nullable=False),
    sa.Column("due_date", sa.Date, nullable=True),
    sa.Column("submitted_at", Timestamp, nullable=True),
    sa.Column("published_at", Timestamp, nullable=True),
    sa.Column("in_mailbox_at", Timestamp, nullable=True),
    sa.Column("fetched_at", Timestamp, nullable=True),
    sa.Column("acknowledged_at", Timestamp, nullable=True),
    sa.Column("replied_at", Timestamp, nullable=True),
    sa.Column("reply_in_inbox_at", Timestamp, nullable=True),
    sa.Column("reply_fetched_at", Timestamp, nullable=True),
    sa.Column("reply_acknowledged_at", Timestamp, nullable=True),
    sa.Column("overdue_at", Timestamp, nullable=True),
    sa.Column("last_reminded_at", Timestamp, nullable=True),
    sa.Column("reminders", sa.Integer, nullable=False, server_default="0"),
    sa.Column("requested_late", sa.Boolean, nullable=True),
    sa.Column("outcome", sa.String(16), nullable=True),  # on_time | overdue
    sa.Index(None, "outcome", "due_date"),
    sa.Index(None, "case_ref"),
)

# Reminders the sweep sent: at most `tracker_reminder_max` per conversation (seq 1, 2, ...).
tracker_reminders = sa.Table(
    "tracker_reminders",
    metadata,
    sa.Column("conversation_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("message_id", sa.String(64), nullable=False, unique=True),
    sa.Column("sent_at", Timestamp, nullable=False),
)

# A sick-listing episode of a citizen with a psychiatric course at one job centre: was there a
# direct job-centre ↔ psychiatry contact within the window?
tracker_episodes = sa.Table(
    "tracker_episodes",
    metadata,
    sa.Column("case_ref", sa.String(64), primary_key=True),
    sa.Column("jobcenter_org", sa.String(64), primary_key=True),
    sa.Column("first_day_of_absence", sa.Date, primary_key=True),
    sa.Column("case_kind", sa.String(32), nullable=False),
    sa.Column("municipality", sa.String(3), nullable=False),
    sa.Column("region_code", sa.String(4), nullable=False),
    sa.Column("window_end", sa.Date, nullable=False),
    sa.Column("first_contact_at", Timestamp, nullable=True),
    sa.Column("contact_source", sa.String(16), nullable=True),  # message | registered
    sa.Column("outcome", sa.String(16), nullable=True),  # contact | no_contact
    sa.Column("decided_at", Timestamp, nullable=True),
    sa.Index(None, "outcome", "window_end"),
)

# Contacts a job centre registered (`POST /jobcenter/v1/contacts`): a meeting or call with
# psychiatry about a citizen, known here by case ref only.
tracker_contacts = sa.Table(
    "tracker_contacts",
    metadata,
    sa.Column("contact_id", sa.String(64), primary_key=True),
    sa.Column("jobcenter_org", sa.String(64), nullable=False),
    sa.Column("psychiatry_org", sa.String(64), nullable=False),
    sa.Column("case_ref", sa.String(64), nullable=False),
    sa.Column("case_kind", sa.String(32), nullable=False),
    sa.Column("first_day_of_absence", sa.Date, nullable=False),
    sa.Column("contact_date", sa.Date, nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("response", sa.Text, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    # the CPR number sealed to the gateway's own HPKE key, to re-key pseudonyms (0007)
    sa.Column("citizen_sealed", sa.Text, nullable=True),
    # who registered it: the job centre or the psychiatry unit (migration 0016)
    sa.Column("registrar_org", sa.String(64), nullable=False),
    sa.UniqueConstraint("registrar_org", "idempotency_key"),
    sa.Index(None, "case_ref"),  # a closed case's erasure finds them so (migration 0019)
)

# Sickness cases a job centre registered (`POST /jobcenter/v1/cases`, migration 0016): the
# denominator of contact coverage, with or without any attest request. The citizen appears as
# the case ref; the CPR number only sealed to the gateway's own key, for re-keying.
tracker_cases = sa.Table(
    "tracker_cases",
    metadata,
    sa.Column("case_id", sa.String(64), primary_key=True),
    sa.Column("jobcenter_org", sa.String(64), nullable=False),
    sa.Column("jobcenter_case_id", sa.String(200), nullable=False),  # the job centre's own id
    sa.Column("case_ref", sa.String(64), nullable=False),
    sa.Column("municipality", sa.String(3), nullable=False),
    sa.Column("region_code", sa.String(4), nullable=False),
    sa.Column("case_kind", sa.String(32), nullable=False),
    sa.Column("psychiatric_course", sa.Boolean, nullable=False),
    sa.Column("first_day_of_absence", sa.Date, nullable=False),
    sa.Column("closed_on", sa.Date, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("citizen_sealed", sa.Text, nullable=True),
    sa.UniqueConstraint("jobcenter_org", "jobcenter_case_id"),
    sa.Index(None, "case_ref"),
    sa.Index(None, "first_day_of_absence"),
)

# Citizens a psychiatry unit registered as in its treatment (`POST /psychiatry/v1/treatments`,
# migration 0016): a case of such a citizen counts as one with a psychiatric course.
tracker_treatments = sa.Table(
    "tracker_treatments",
    metadata,
    sa.Column("treatment_id", sa.String(64), primary_key=True),
    sa.Column("psychiatry_org", sa.String(64), nullable=False),
    sa.Column("case_ref", sa.String(64), nullable=False),
    sa.Column("region_code", sa.String(4), nullable=True),  # the psychiatry unit's region
    sa.Column("start_date", sa.Date, nullable=False),
    sa.Column("end_date", sa.Date, nullable=True),
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("response", sa.Text, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("citizen_sealed", sa.Text, nullable=True),  # null when named by case ref
    sa.UniqueConstraint("psychiatry_org", "idempotency_key"),
    sa.Index(None, "case_ref"),
)

# Incremental rollups, maintained as events arrive. A cell is (grain, period kind, period
# start, attest type, dim): grain `national` (dim DK) / `region` / `municipality` / `receiver`
# with its code as dim; attest type `*` for all types, `-` for citizen-level (contact) counts.
# Each cell is a row of `tracker_cells` and the rollups refer to it by its id (migration
# 0011): every event writes several rollup rows, and an insert or update keyed by one integer
# costs PostgreSQL much less than one keyed by the five columns
# (docs/decisions/0008-rollup-cells-by-id.md). The id is a digest of the
# five columns (`tracker.store.cell_id`), so a tracker that remembers ids can find one
# missing, never pointing at another cell.
# The counter and histogram rows are updated by every event: their pages keep a fifth free, so
# that an update finds room beside its row (a HOT update, no new index entry). Migration 0010.
ROLLUP_FILLFACTOR = 80

tracker_cells = sa.Table(
    "tracker_cells",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("grain", sa.String(16), nullable=False),
    sa.Column("period_kind", sa.String(5), nullable=False),
    sa.Column("period_start", sa.Date, nullable=False),
    sa.Column("attest_type", sa.String(16), nullable=False),
    sa.Column("dim", sa.String(64), nullable=False),
    sa.UniqueConstraint(
        "grain", "period_kind", "period_start", "attest_type", "dim", name="uq_tracker_cells_key"
    ),
)


def _cell_id() -> sa.Column[int]:
    return sa.Column("cell_id", sa.BigInteger, sa.ForeignKey("tracker_cells.id"), primary_key=True)


tracker_counts = sa.Table(
    "tracker_counts",
    metadata,
    _cell_id(),
    sa.Column("requests", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("citizens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("late_requests", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("replied", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("decided", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("overdue", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("reminders", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("contact_decided", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("contact_covered", sa.BigInteger, nullable=False, server_default="0"),
    postgresql_with={"fillfactor": ROLLUP_FILLFACTOR},
)

# Duration histograms per cell: log-scale buckets (8 per doubling, from one minute).
tracker_durations = sa.Table(
    "tracker_durations",
    metadata,
    _cell_id(),
    sa.Column("metric", sa.String(32), primary_key=True),
    sa.Column("bucket", sa.SmallInteger, primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    postgresql_with={"fillfactor": ROLLUP_FILLFACTOR},
)

# Which citizens a cell already counts (so `tracker_counts.citizens` counts each one once).
tracker_cell_citizens = sa.Table(
    "tracker_cell_citizens",
    metadata,
    _cell_id(),
    sa.Column("case_ref", sa.String(64), primary_key=True),
    sa.Index(None, "case_ref"),  # a closed case's erasure finds them so (migration 0019)
)

# Request → attest for Kaplan–Meier (migration 0020), per request cell (grain national,
# region or municipality; week and month; the attest type and `*`) and per receiver-kind cell
# (grain `rk:<place grain>`, dim `<place>/<receiver kind>`, whose `tracker_counts` row counts
# its requests and citizens only): `state` `answered` counts the requests answered with an
# attest `day` calendar days (Danish time) after they were made, `open` the requests still
# without one made on the `day`th day of the cell's period (0: its first), censored at their
# age when read.
tracker_latency = sa.Table(
    "tracker_latency",
    metadata,
    _cell_id(),
    sa.Column("state", sa.String(8), primary_key=True),
    sa.Column("day", sa.Integer, primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    postgresql_with={"fillfactor": ROLLUP_FILLFACTOR},
)

# When in the absence requests are made (migration 0026), per request cell (grain national,
# region or municipality; week and month; the attest type and `*`) and per case-kind cell
# (grain `ck:<place grain>`, dim `<place>/<case kind>`, whose `tracker_counts` row counts its
# requests and citizens only): `n` requests made in week `week` of the citizen's absence (the
# first day of absence is day 1 of week 1; 0 before it, 27 for week 27 or later).
tracker_request_weeks = sa.Table(
    "tracker_request_weeks",
    metadata,
    _cell_id(),
    sa.Column("week", sa.SmallInteger, primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    postgresql_with={"fillfactor": ROLLUP_FILLFACTOR},
)

# The requests open and overdue now (migration 0027, infra/db/overdue.py), per cell: week or
# month of the day the request was made, grain national, region or municipality and its place,
# the receiving unit (`receiver`, "" for all) and the attest type or `*`; the cell's id is a
# digest of those six columns (`overdue.cell_id`). `requests` and `citizens` (distinct, its
# weight for disclosure control) of the cell; per due date its requests (9999-12-31: overdue
# without a known due date); per citizen its requests. Rows at 0 are deleted.
tracker_overdue_cells = sa.Table(
    "tracker_overdue_cells",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("period_kind", sa.String(7), nullable=False),
    sa.Column("period_start", sa.Date, nullable=False),
    sa.Column("grain", sa.String(16), nullable=False),
    sa.Column("place", sa.String(4), nullable=False),
    sa.Column("receiver", sa.String(64), nullable=False),
    sa.Column("attest_type", sa.String(16), nullable=False),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("citizens", sa.BigInteger, nullable=False),
    sa.Index(None, "period_kind", "grain", "period_start"),
)

tracker_overdue = sa.Table(
    "tracker_overdue",
    metadata,
    sa.Column("cell_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("due_date", sa.Date, primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
)

tracker_overdue_citizens = sa.Table(
    "tracker_overdue_citizens",
    metadata,
    sa.Column("cell_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("case_ref", sa.String(64), primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
)

# Contact over registered cases as a rollup (migration 0022, infra/db/coverage.py). One row per
# counted case (its kind is a contact case kind and its citizen has a psychiatric course), with
# its decision: the source of its first direct contact in the window, `closed_early`, or
# `open` (no contact yet: without contact once the window has closed, pending before). Keyed
# by the case's id alone (no case ref: the case row names the citizen).
tracker_coverage_cases = sa.Table(
    "tracker_coverage_cases",
    metadata,
    sa.Column("case_id", sa.String(64), primary_key=True),
    sa.Column("window_end", sa.Date, nullable=False),
    sa.Column("region_code", sa.String(4), nullable=False),
    sa.Column("municipality", sa.String(3), nullable=False),
    sa.Column("case_kind", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
)

# The counted cases per cell (period kind and start of the window's last day, grain, place,
# case kind or `*`): `state` a decision (`day` 0) or `open` per window's last day (`day`: days
# from the period's start; decided without or pending when read), for weeks and months; and
# `citizens` (`day` 0), the distinct citizens of the cell's counted cases, for weeks, months,
# quarters and years (each cell's exact weight for disclosure control).
tracker_coverage = sa.Table(
    "tracker_coverage",
    metadata,
    sa.Column("period_kind", sa.String(7), primary_key=True),
    sa.Column("period_start", sa.Date, primary_key=True),
    sa.Column("grain", sa.String(16), primary_key=True),
    sa.Column("place", sa.String(4), primary_key=True),
    sa.Column("case_kind", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(16), primary_key=True),
    sa.Column("day", sa.Integer, primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    postgresql_with={"fillfactor": ROLLUP_FILLFACTOR},
)

# A ressourceforløb case's wait for its health information as a rollup (migration 0028,
# infra/db/rehabilitation.py). One row per case (case ref, job centre, first day of absence)
# with what decides it: its first request (when made, its id, its place) and per group of
# `TRACKER_REHAB_HEALTH_INFORMATION` the day (tracker time zone) of the group's first attest,
# empty while none (`answered`: the groups' ISO dates, comma-separated, in the groups' order).
tracker_rehab_cases = sa.Table(
    "tracker_rehab_cases",
    metadata,
    sa.Column("case_ref", sa.String(64), primary_key=True),
    sa.Column("jobcenter_org", sa.String(64), primary_key=True),
    sa.Column("first_day_of_absence", sa.Date, primary_key=True),
    sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("first_id", sa.String(64), nullable=False),
    sa.Column("region_code", sa.String(4), nullable=False),
    sa.Column("municipality", sa.String(3), nullable=False),
    sa.Column("answered", sa.Text, nullable=False),
)

# The cases per cell (period kind and start of the first request's day, grain, place): for
# weeks and months `complete` per whole days of wait (`day`), `open` per first-request day
# (`day`: days from the period's start; censored at its age when read) and `missing:<i>` (the
# open cases without an attest of group i, `day` 0); for weeks, months, quarters and years
# `citizens` (`day` 0), the cell's distinct citizens (its exact weight for disclosure control).
tracker_rehab = sa.Table(
    "tracker_rehab",
    metadata,
    sa.Column("period_kind", sa.String(7), primary_key=True),
    sa.Column("period_start", sa.Date, primary_key=True),
    sa.Column("grain", sa.String(16), primary_key=True),
    sa.Column("place", sa.String(4), primary_key=True),
    sa.Column("state", sa.String(16), primary_key=True),
    sa.Column("day", sa.Integer, primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    postgresql_with={"fillfactor": ROLLUP_FILLFACTOR},
)

# Published disclosure decisions (migration 0023, tracker/decisions.py): the suppressed cells
# of a whole cube (tracker/disclosure.py `decide_cube`), decided in the background when its
# weights change, so that a report over a large cube (the receiver drill-down) reads the
# decision instead of making it. `tracker_decisions`: one row per cube (its key names the
# grains, the figure, the year and the threshold), the digest of the weights it was decided
# over and when it was decided or last found to stand. `tracker_decision_cells`: per cube,
# period kind, grain and type, its cells as decided (a JSON list of [period start, place,
# shown 1 or 0, citizens, counters …], report.py `snapshot_rows`), which a report reads
# instead of the rollups.
tracker_decisions = sa.Table(
    "tracker_decisions",
    metadata,
    sa.Column("cube", sa.String(160), primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("decided_at", Timestamp, nullable=False),
    sa.Column("cells", sa.Integer, nullable=False),
    sa.Column("suppressed", sa.Integer, nullable=False),
)

tracker_decision_cells = sa.Table(
    "tracker_decision_cells",
    metadata,
    sa.Column("cube", sa.String(160), primary_key=True),
    sa.Column("period_kind", sa.String(7), primary_key=True),
    sa.Column("grain", sa.String(16), primary_key=True),
    sa.Column("attest_type", sa.String(16), primary_key=True),
    sa.Column("cells", sa.Text, nullable=False),
)

# And the duration distributions the reports of published cubes read, per metric, period
# kind, grain, `types` and year: `all` (every attest type's cells summed: a JSON list of
# [period start, place, [bucket, n, bucket, n …]]) or `each` (per type: [period start, place,
# type, [bucket, n …]]), made with the decisions of the cubes holding the grain.
tracker_decision_histograms = sa.Table(
    "tracker_decision_histograms",
    metadata,
    sa.Column("metric", sa.String(32), primary_key=True),
    sa.Column("period_kind", sa.String(7), primary_key=True),
    sa.Column("grain", sa.String(16), primary_key=True),
    sa.Column("types", sa.String(16), primary_key=True),  # all, each or a type (0025)
    sa.Column("year", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("decided_at", Timestamp, nullable=False),
    sa.Column("cells", sa.Text, nullable=False),
)

# --- audit (migration 0005) ------------------------------------------------------------------
# The append-only, hash-chained audit log (infra/db/audit.py): reads of content and
# administrative changes. Ids and addresses only, never content or CPR numbers.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", Timestamp, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("subject_org", sa.String(64), nullable=True),
    sa.Column("message_id", sa.String(64), nullable=True),
    sa.Column("conversation_id", sa.String(64), nullable=True),
    sa.Column("detail", sa.Text, nullable=True),  # canonical JSON of a str → str map
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Index(None, "actor", "seq"),
    sa.Index(None, "subject_org", "seq"),
)

# Audit events appended unchained (migration 0019), in the caller's transaction without a
# shared lock; the chainer (infra/db/audit.py `chain_pending`) chains them in `id` order and
# marks each with its seq (NULL: pending). The partial index holds the pending rows only.
audit_pending = sa.Table(
    "audit_pending",
    metadata,
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
        autoincrement=True,
    ),
    sa.Column("at", Timestamp, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("subject_org", sa.String(64), nullable=True),
    sa.Column("message_id", sa.String(64), nullable=True),
    sa.Column("conversation_id", sa.String(64), nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("seq", sa.BigInteger, nullable=True),
    sa.UniqueConstraint("seq", name="uq_audit_pending_seq"),
    sa.Index(
        "ix_audit_pending_unchained", "id", postgresql_where=sa.text("seq IS NULL"),
        sqlite_where=sa.text("seq IS NULL"),
    ),
)  # fmt: skip

# One row (id 1): the chain's last seq and hash. Appends lock it, so two processes never
# fork the chain; `audit verify` holds the log against it, so a cut tail shows.
audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# Signed checkpoints of the chain (migration 0014): the head's seq and hash at `at`, signed
# with the gateway's Ed25519 signing key `key_id` (infra/db/audit.py). Entries are pruned only
# up to a checkpoint; `audit verify` starts from the oldest one kept.
audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("at", Timestamp, nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("signature", sa.String(128), nullable=False),
)

# --- webhooks (migration 0015) ---------------------------------------------------------------
# An organisation's endpoints (services/webhooks.py) and the deliveries made for them. The
# secrets sign (HMAC) and so are kept as they are; a payload is metadata only (ids, types,
# stages, API paths), never content or a CPR number. Endpoints are removed by marking them, so
# their deliveries stay in the organisation's log.
webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(64), sa.ForeignKey("organisations.id"), nullable=False),
    sa.Column("url", sa.String(500), nullable=False),
    sa.Column("events", sa.String(500), nullable=False),  # the event types, space-separated
    sa.Column("secret", sa.String(100), nullable=False),
    sa.Column("previous_secret", sa.String(100), nullable=True),
    sa.Column("previous_until", Timestamp, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("removed_at", Timestamp, nullable=True),
    sa.Index(None, "org_id"),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # the `webhook-id`, from the event
    sa.Column("endpoint_id", sa.String(40), sa.ForeignKey("webhook_endpoints.id"), nullable=False),
    sa.Column("org_id", sa.String(64), nullable=False),
    sa.Column("event_type", sa.String(40), nullable=False),
    sa.Column("conversation_id", sa.String(64), nullable=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("give_up_at", Timestamp, nullable=False),
    sa.Column("next_attempt_at", Timestamp, nullable=True),
    sa.Column("last_attempt_at", Timestamp, nullable=True),
    sa.Column("last_status_code", sa.Integer, nullable=True),
    sa.Column("last_error", sa.String(200), nullable=True),
    sa.Column("delivered_at", Timestamp, nullable=True),
    sa.Index(None, "status", "next_attempt_at"),
    sa.Index(None, "org_id", "created_at"),
)
