-- History retention (`--retain`): the inbox rows of events processed before the
-- cutoff are deleted in chunks, oldest first. The inbox is keyed by event id, which
-- says nothing of time, so without this index each chunk would read the whole inbox.
-- (received_messages and processing_attempts need none: their ids follow time.)
CREATE INDEX inbox_by_processed_at ON inbox (processed_at);
