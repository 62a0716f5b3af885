-- The trace id of each attempt, the one its event's HTTP request started: a game's
-- history leads to the request's trace and its log lines.
ALTER TABLE processing_attempts ADD COLUMN trace_id TEXT;
