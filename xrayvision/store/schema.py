"""The versioned SQLite schema: each migration moves `PRAGMA user_version` up by one, inside one transaction."""
from __future__ import annotations

# Exam statuses. Code never spells them inline.
NONE = "none"
QUEUED = "queued"
PROCESSING = "processing"
DONE = "done"
ERROR = "error"
IGNORE = "ignore"
REQUEUE = "requeue"
CHECK = "check"
STATUSES = (NONE, QUEUED, PROCESSING, DONE, ERROR, IGNORE, REQUEUE, CHECK)

_STATUS_LIST = ", ".join(f"'{s}'" for s in STATUSES)

# SOP classes of projection radiographs: only these are analysed and rendered; any other object is kept and ignored.
# Here because an index names them (UNRENDERED).
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
RADIOGRAPH_SOP_CLASSES = (
    CR_SOP_CLASS,
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
)

# Times are UTC text, 'YYYY-MM-DD HH:MM:SS', so SQLite's date functions and plain ordering both work.
_V1 = f"""
CREATE TABLE patients (
    cnp        TEXT PRIMARY KEY,              -- the valid CNP, else the DICOM PatientID, else a per-study key
    id         TEXT NOT NULL DEFAULT '',      -- the hospital information system's id, filled from FHIR
    patient_id TEXT NOT NULL DEFAULT '',      -- PatientID as the modality sent it
    name       TEXT NOT NULL DEFAULT '',
    birthdate  TEXT,                          -- YYYY-MM-DD
    sex        TEXT NOT NULL DEFAULT 'O' CHECK (sex IN ('M', 'F', 'O')),
    county     INTEGER,
    updated    TEXT NOT NULL
);
CREATE INDEX idx_patients_name ON patients(name);

CREATE TABLE exams (
    uid        TEXT PRIMARY KEY,              -- SOP Instance UID
    cnp        TEXT NOT NULL REFERENCES patients(cnp),
    id         TEXT NOT NULL DEFAULT '',      -- accession / HIS request id
    created    TEXT NOT NULL,                 -- when the exam was made (UTC)
    received   TEXT NOT NULL,                 -- when we stored it (UTC)
    updated    TEXT NOT NULL,
    protocol   TEXT NOT NULL DEFAULT '',
    region     TEXT NOT NULL DEFAULT '',
    projection TEXT NOT NULL DEFAULT '',
    type       TEXT NOT NULL DEFAULT '',      -- modality
    sop_class  TEXT NOT NULL DEFAULT '',
    transfer_syntax TEXT NOT NULL DEFAULT '',
    age        INTEGER,                       -- completed years at the exam
    status     TEXT NOT NULL DEFAULT '{NONE}' CHECK (status IN ({_STATUS_LIST})),
    reason     TEXT NOT NULL DEFAULT '',      -- why an exam is 'ignore' or 'error'
    study      TEXT NOT NULL DEFAULT '',
    series     TEXT NOT NULL DEFAULT '',
    dicom      TEXT,                          -- file name of the kept .dcm, NULL once removed
    image      TEXT,                          -- file name of the rendered .png, NULL until rendered
    attempts   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX idx_exams_created ON exams(created DESC);
CREATE INDEX idx_exams_status ON exams(status, created DESC);
CREATE INDEX idx_exams_cnp ON exams(cnp, region, created DESC);
CREATE INDEX idx_exams_study ON exams(study);
CREATE INDEX idx_exams_region ON exams(region);
-- Work still to render; small, so the renderer finds it without a scan.
CREATE INDEX idx_exams_unrendered ON exams(received) WHERE image IS NULL AND dicom IS NOT NULL AND status = '{QUEUED}';

-- Every answer the model gave, oldest first: a re-analysis adds a row, it does not overwrite.
CREATE TABLE ai_reports (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    uid        TEXT NOT NULL REFERENCES exams(uid) ON DELETE CASCADE,
    created    TEXT NOT NULL,
    updated    TEXT NOT NULL,
    text       TEXT NOT NULL DEFAULT '',
    positive   INTEGER NOT NULL DEFAULT -1 CHECK (positive IN (-1, 0, 1)),
    confidence INTEGER NOT NULL DEFAULT -1 CHECK (confidence BETWEEN -1 AND 100),
    severity   INTEGER NOT NULL DEFAULT -1 CHECK (severity BETWEEN -1 AND 10),
    summary    TEXT NOT NULL DEFAULT '',
    model      TEXT NOT NULL DEFAULT '',
    endpoint   TEXT NOT NULL DEFAULT '',
    prompt_version TEXT NOT NULL DEFAULT '',
    latency    INTEGER NOT NULL DEFAULT -1,   -- milliseconds
    tokens_in  INTEGER,
    tokens_out INTEGER
);
CREATE INDEX idx_ai_reports_uid ON ai_reports(uid, seq DESC);
CREATE INDEX idx_ai_reports_created ON ai_reports(created);

CREATE TABLE rad_reports (
    uid        TEXT PRIMARY KEY REFERENCES exams(uid) ON DELETE CASCADE,
    id         TEXT NOT NULL DEFAULT '',
    created    TEXT NOT NULL,
    updated    TEXT NOT NULL,
    text       TEXT NOT NULL DEFAULT '',
    text_en    TEXT,
    positive   INTEGER NOT NULL DEFAULT -1 CHECK (positive IN (-1, 0, 1)),
    severity   INTEGER NOT NULL DEFAULT -1 CHECK (severity BETWEEN -1 AND 10),
    summary    TEXT NOT NULL DEFAULT '',
    type       TEXT NOT NULL DEFAULT '',
    radiologist TEXT NOT NULL DEFAULT '',
    justification TEXT NOT NULL DEFAULT '',
    model      TEXT NOT NULL DEFAULT '',
    latency    INTEGER NOT NULL DEFAULT -1
);
CREATE INDEX idx_rad_reports_created ON rad_reports(created);
"""

# The analysis queue: automatic retries after a passing failure, and partial indexes that keep claiming and reviving
# cheap however many exams are done.
_V2 = f"""
ALTER TABLE exams ADD COLUMN retry_at TEXT;  -- when an 'error' exam goes back to the queue by itself (UTC)
CREATE INDEX idx_exams_queue ON exams(created) WHERE status IN ('{QUEUED}', '{REQUEUE}') AND image IS NOT NULL;
CREATE INDEX idx_exams_retry ON exams(retry_at) WHERE status = '{ERROR}' AND retry_at IS NOT NULL;
"""

# Reviews, and what the worklist filters on, kept beside each exam: the latest AI answer, the graded report and
# the manual verdict. Triggers keep the copies true whoever writes, so filters and counts need no joins.
_V3 = """
CREATE TABLE reviews (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    uid       TEXT NOT NULL REFERENCES exams(uid) ON DELETE CASCADE,
    reviewer  TEXT NOT NULL,
    verdict   INTEGER NOT NULL CHECK (verdict IN (0, 1)),   -- 0 normal, 1 abnormal
    created   TEXT NOT NULL
);
CREATE INDEX idx_reviews_uid ON reviews(uid, seq DESC);

ALTER TABLE exams ADD COLUMN ai_severity INTEGER NOT NULL DEFAULT -1;
ALTER TABLE exams ADD COLUMN ai_confidence INTEGER NOT NULL DEFAULT -1;
ALTER TABLE exams ADD COLUMN rad_severity INTEGER NOT NULL DEFAULT -1;
ALTER TABLE exams ADD COLUMN verdict INTEGER NOT NULL DEFAULT -1;       -- the latest manual review, -1 none
ALTER TABLE exams ADD COLUMN radiologist TEXT NOT NULL DEFAULT '';
ALTER TABLE exams ADD COLUMN diagnostic TEXT NOT NULL DEFAULT '';       -- the graded report's summary, lower case

UPDATE exams SET
    ai_severity = COALESCE((SELECT severity FROM ai_reports WHERE uid = exams.uid ORDER BY seq DESC LIMIT 1), -1),
    ai_confidence = COALESCE((SELECT confidence FROM ai_reports WHERE uid = exams.uid ORDER BY seq DESC LIMIT 1), -1),
    rad_severity = COALESCE((SELECT severity FROM rad_reports WHERE uid = exams.uid), -1),
    radiologist = COALESCE((SELECT radiologist FROM rad_reports WHERE uid = exams.uid), ''),
    diagnostic = COALESCE((SELECT LOWER(summary) FROM rad_reports WHERE uid = exams.uid), '');

CREATE TRIGGER ai_reports_latest AFTER INSERT ON ai_reports BEGIN
    UPDATE exams SET ai_severity = NEW.severity, ai_confidence = NEW.confidence WHERE uid = NEW.uid;
END;
CREATE TRIGGER rad_reports_added AFTER INSERT ON rad_reports BEGIN
    UPDATE exams SET rad_severity = NEW.severity, radiologist = NEW.radiologist, diagnostic = LOWER(NEW.summary)
    WHERE uid = NEW.uid;
END;
CREATE TRIGGER rad_reports_changed AFTER UPDATE ON rad_reports BEGIN
    UPDATE exams SET rad_severity = NEW.severity, radiologist = NEW.radiologist, diagnostic = LOWER(NEW.summary)
    WHERE uid = NEW.uid;
END;
CREATE TRIGGER reviews_latest AFTER INSERT ON reviews BEGIN
    UPDATE exams SET verdict = NEW.verdict WHERE uid = NEW.uid;
END;

CREATE INDEX idx_exams_ai_severity ON exams(ai_severity, created);
CREATE INDEX idx_exams_radiologist ON exams(radiologist COLLATE NOCASE);
CREATE INDEX idx_exams_diagnostic ON exams(diagnostic);
"""

# The worklist at 100,000 exams: indexes that hold every filtered column, so a count reads an index and not the
# table, and a page walks the date order instead of sorting; a partial index for triage's first group.
_V4 = """
DROP INDEX idx_exams_created;
CREATE INDEX idx_exams_worklist ON exams(created DESC, uid DESC, status, region, ai_severity, ai_confidence,
                                         rad_severity, verdict);
DROP INDEX idx_exams_status;
CREATE INDEX idx_exams_status ON exams(status, created DESC, uid DESC, region, ai_severity, ai_confidence,
                                       rad_severity, verdict);
CREATE INDEX idx_exams_triage ON exams(ai_severity DESC, created DESC, uid DESC)
    WHERE verdict < 0 AND rad_severity < 0;
CREATE INDEX idx_exams_status_region ON exams(status, region);
-- A whole identifier typed in the search box is found through these, not by scanning.
CREATE INDEX idx_exams_accession ON exams(id);
CREATE INDEX idx_patients_patient_id ON patients(patient_id);
CREATE INDEX idx_patients_his_id ON patients(id);
"""

# Identity as each exam arrived: a later instance with the same key and other demographics must not rename the
# patient on earlier exams. Exams keep their own name, birth date and sex (empty, NULL, 'O' when the instance had
# none); the patient row keeps the first known values, and is flagged when its instances disagree. Existing exams
# take their patient's values: what they arrived with is no longer known.
_V5 = """
ALTER TABLE exams ADD COLUMN patient_name TEXT NOT NULL DEFAULT '';
ALTER TABLE exams ADD COLUMN patient_birthdate TEXT;                    -- YYYY-MM-DD
ALTER TABLE exams ADD COLUMN patient_sex TEXT NOT NULL DEFAULT 'O' CHECK (patient_sex IN ('M', 'F', 'O'));
ALTER TABLE patients ADD COLUMN identity_conflict INTEGER NOT NULL DEFAULT 0 CHECK (identity_conflict IN (0, 1));
UPDATE exams SET
    patient_name = (SELECT name FROM patients WHERE cnp = exams.cnp),
    patient_birthdate = (SELECT birthdate FROM patients WHERE cnp = exams.cnp),
    patient_sex = (SELECT sex FROM patients WHERE cnp = exams.cnp);
"""

# Radiographs still to render: the queued ones, and those ignored for their region (a radiologist still looks at a
# knee the model is not asked about). Written out, not built from RADIOGRAPH_SOP_CLASSES, because a released migration
# never changes; a test holds the two together. exams.awaiting_render's query repeats it, so the index serves it.
UNRENDERED = ("image IS NULL AND dicom IS NOT NULL AND status IN ('queued', 'ignore') AND sop_class IN "
              "('1.2.840.10008.5.1.4.1.1.1', '1.2.840.10008.5.1.4.1.1.1.1', '1.2.840.10008.5.1.4.1.1.1.1.1')")
_V6 = f"""
DROP INDEX idx_exams_unrendered;
CREATE INDEX idx_exams_unrendered ON exams(received) WHERE {UNRENDERED};
"""

# Radiologists' reports from FHIR. report_fetches keeps the search for each done exam's report: tries, when the next
# is due (backing off), and whether we found it or gave up ('missing'). rad_reports gains where the report came from
# and the grading's bookkeeping; report_calls keeps every model call about a report, as ai_reports does for images.
# A report waiting for its grade (reports.py and queue.finish read it; the partial index holds just these rows).
AWAITING_GRADE = "severity < 0 AND grade_error = ''"
_V7 = f"""
CREATE TABLE report_fetches (
    uid       TEXT PRIMARY KEY REFERENCES exams(uid) ON DELETE CASCADE,
    attempts  INTEGER NOT NULL DEFAULT 0,
    next_at   TEXT,                                  -- when the next try is due (UTC), while seeking
    state     TEXT NOT NULL DEFAULT 'seeking' CHECK (state IN ('seeking', 'missing', 'found')),
    reason    TEXT NOT NULL DEFAULT '',              -- the latest try's outcome, without patient data
    request   TEXT NOT NULL DEFAULT '',              -- the imaging ServiceRequest's id, once known
    updated   TEXT NOT NULL
);
CREATE INDEX idx_report_fetches_due ON report_fetches(next_at) WHERE state = 'seeking';

ALTER TABLE rad_reports ADD COLUMN request TEXT NOT NULL DEFAULT '';         -- ServiceRequest id
ALTER TABLE rad_reports ADD COLUMN issued TEXT;                              -- DiagnosticReport.issued (UTC)
ALTER TABLE rad_reports ADD COLUMN report_status TEXT NOT NULL DEFAULT '';   -- final, amended or corrected
ALTER TABLE rad_reports ADD COLUMN endpoint TEXT NOT NULL DEFAULT '';        -- the grading's
ALTER TABLE rad_reports ADD COLUMN prompt_version TEXT NOT NULL DEFAULT '';
ALTER TABLE rad_reports ADD COLUMN graded TEXT;                              -- when graded (UTC); severity says whether
ALTER TABLE rad_reports ADD COLUMN grade_error TEXT NOT NULL DEFAULT '';     -- why grading gave up, '' otherwise
UPDATE rad_reports SET graded = updated WHERE severity >= 0;
UPDATE rad_reports SET grade_error = 'no report text to grade' WHERE severity < 0 AND text = '';
-- Reports still to grade: few, so the grader finds them without a scan.
CREATE INDEX idx_rad_reports_ungraded ON rad_reports(created) WHERE {AWAITING_GRADE};

CREATE TABLE report_calls (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    uid        TEXT NOT NULL REFERENCES exams(uid) ON DELETE CASCADE,
    created    TEXT NOT NULL,
    kind       TEXT NOT NULL,                        -- translate or grade
    model      TEXT NOT NULL DEFAULT '',
    endpoint   TEXT NOT NULL DEFAULT '',
    prompt_version TEXT NOT NULL DEFAULT '',
    latency    INTEGER NOT NULL DEFAULT -1,          -- milliseconds
    raw        TEXT,                                 -- the model's text as it came
    tokens_in  INTEGER,
    tokens_out INTEGER,
    error      TEXT                                  -- NULL when the answer was used
);
CREATE INDEX idx_report_calls_uid ON report_calls(uid, seq);
"""

# Append only: a released migration never changes, a new one is added after it.
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7)
SCHEMA_VERSION = len(MIGRATIONS)
